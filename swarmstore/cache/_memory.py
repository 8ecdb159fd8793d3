"""MemoryTier: the RAM tier, a byte-bounded LRU (``zict.LRU``) with an admission rule."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import zict

from swarmstore.cache._span import WHOLE, Span, slice_whole

__all__ = ["Entry", "MemoryTier"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached value and what is needed to judge whether it is still fresh."""

    #: The bytes (a read-only view when read from disk), immutable so no reader can change
    #: what the next reader gets; None: the key was absent (a negative entry).
    data: bytes | memoryview | None
    #: ``time.time()`` when the value was read from the backing store.
    filled_at: float
    #: The backing store's version token of the key when it was read (validation), or None.
    token: str | None = None


class MemoryTier:
    """Keep recently read values in RAM, least recently used leaving first.

    Parameters
    ----------
    max_bytes : int
        Bound on the bytes held; 0 disables the tier.
    admission_fraction : float
        A value larger than ``admission_fraction * max_bytes`` is not admitted, so one huge
        value cannot flush everything else.

    Notes
    -----
    Thread-safe: one lock guards the LRU and the per-key index, and every method is short.
    The LRU itself is ``zict.LRU`` weighted by value size; this class adds the admission
    rule, the index that lets a write drop every cached span of a key, and counters.

    Examples
    --------
    >>> tier = MemoryTier(max_bytes=1000)
    >>> tier.put("a", None, Entry(b"x" * 200, 0.0))
    True
    >>> tier.put("b", None, Entry(b"x" * 300, 0.0))  # more than a quarter of 1000 bytes
    False
    >>> len(tier.get("a", ("r", 0, 10)).data)  # a whole-value entry answers any range
    10
    """

    def __init__(self, max_bytes: int, admission_fraction: float = 0.25) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if not 0 < admission_fraction <= 1:
            raise ValueError(f"admission_fraction must be in (0, 1], got {admission_fraction}")
        self.max_bytes = int(max_bytes)
        self.admission_fraction = float(admission_fraction)
        self._lock = threading.RLock()
        self._lru: zict.LRU[tuple[str, Span], Entry] = zict.LRU(
            self.max_bytes, {}, weight=_weight, on_evict=self._on_evict
        )
        self._spans: dict[str, set[Span]] = {}
        self.hits = self.misses = self.evictions = self.rejected = 0

    def __repr__(self) -> str:
        return f"MemoryTier({self._lru.total_weight:.0f}/{self.max_bytes} bytes)"

    def __getstate__(self) -> dict[str, Any]:
        # A copy elsewhere starts empty: cached bytes are never shipped between processes.
        return {"max_bytes": self.max_bytes, "admission_fraction": self.admission_fraction}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def nbytes(self) -> int:
        return int(self._lru.total_weight)

    def get(self, key: str, span: Span) -> Entry | None:
        """The cached bytes of ``(key, span)``, cut from a whole-value entry if there is one."""
        with self._lock:
            spans = self._spans.get(key)
            if spans is not None:
                if WHOLE in spans:
                    self.hits += 1
                    entry = self._lru[(key, WHOLE)]
                    if span is WHOLE or entry.data is None:
                        return entry
                    part = slice_whole(memoryview(entry.data), span)
                    return Entry(part, entry.filled_at, entry.token)  # type: ignore[arg-type]
                if span in spans:
                    self.hits += 1
                    return self._lru[(key, span)]
            self.misses += 1
            return None

    def admits(self, nbytes: int) -> bool:
        """Whether a value of ``nbytes`` would be admitted."""
        return bool(self.max_bytes) and nbytes <= self.admission_fraction * self.max_bytes

    def put(self, key: str, span: Span, entry: Entry) -> bool:
        """Admit ``entry``; False when it is larger than the admission limit."""
        if not self.admits(len(entry.data) if entry.data is not None else 0):
            with self._lock:
                self.rejected += 1
            return False
        with self._lock:
            self._spans.setdefault(key, set()).add(span)
            self._lru[(key, span)] = entry
            return (key, span) in self._lru

    def discard(self, key: str) -> None:
        """Forget every cached span of ``key`` (after a write or delete)."""
        with self._lock:
            for span in self._spans.pop(key, ()):
                self._lru.discard((key, span))

    def discard_span(self, key: str, span: Span) -> None:
        """Forget one entry (found stale)."""
        with self._lock:
            self._lru.discard((key, span))
            spans = self._spans.get(key)
            if spans is not None:
                spans.discard(span)
                if not spans:
                    del self._spans[key]

    def discard_prefix(self, prefix: str) -> None:
        """Forget every key that starts with ``prefix`` (after ``delete_dir``)."""
        with self._lock:
            for key in [k for k in self._spans if k.startswith(prefix)]:
                self.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._lru.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "bytes": self.nbytes,
                "entries": len(self._lru),
                "evictions": self.evictions,
                "rejected": self.rejected,
                "max_bytes": self.max_bytes,
            }

    def _on_evict(self, lru_key: tuple[str, Span], entry: Entry) -> None:
        key, span = lru_key
        with self._lock:
            self.evictions += 1
            spans = self._spans.get(key)
            if spans is not None:
                spans.discard(span)
                if not spans:
                    del self._spans[key]


def _weight(key: tuple[str, Span], entry: Entry) -> int:
    # a little per-entry overhead, so empty values and absent keys still count
    return (len(entry.data) if entry.data is not None else 0) + 100
