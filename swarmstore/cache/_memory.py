"""MemoryTier: the RAM tier, byte-bounded and scan-resistant (S3-FIFO), with an admission rule."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from swarmstore import config
from swarmstore.cache._policy import make_policy
from swarmstore.cache._span import WHOLE, Span, slice_whole
from swarmstore.cache._tier import Entry, Generations, SyncTier

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["Entry", "MemoryTier"]

#: bytes counted per entry beyond its value, so empty values and absent keys still weigh
_OVERHEAD = 100


class MemoryTier(SyncTier):
    """Keep recently read values in RAM; a scan larger than RAM does not flush the hot set.

    Parameters
    ----------
    max_bytes : int
        Bound on the bytes held; 0 disables the tier.
    admission_fraction : float
        A value larger than ``admission_fraction * max_bytes`` is not admitted, so one huge
        value cannot flush everything else.
    policy : {"s3fifo", "lru"}, optional
        Replacement policy (see ``_policy``); LRU is kept as the measured baseline.
        Default: ``swarmstore.cache.memory-policy``.

    Notes
    -----
    Thread-safe: one lock guards the policy and the per-key index of spans, and every
    method is short; no method does I/O, so the async forms run inline. A hit is a
    zero-copy view of the cached bytes. ``put`` refuses a value whose ticket predates an
    eviction of its key (see ``_tier``).

    Examples
    --------
    >>> tier = MemoryTier(max_bytes=1000)
    >>> t = tier.ticket("ns", "a")
    >>> tier.put_sync("ns", "a", None, Entry(b"x" * 200, 0.0), t)
    True
    >>> tier.put_sync("ns", "b", None, Entry(b"x" * 300, 0.0), t)  # over a quarter of 1000
    False
    >>> len(tier.get_sync("ns", "a", ("r", 0, 10)).data)  # a whole value answers any range
    10
    """

    name = "memory"

    def __init__(
        self, max_bytes: int, admission_fraction: float = 0.25, policy: str | None = None
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if not 0 < admission_fraction <= 1:
            raise ValueError(f"admission_fraction must be in (0, 1], got {admission_fraction}")
        self.max_bytes = int(max_bytes)
        self.admission_fraction = float(admission_fraction)
        self.policy = str(config.value("cache.memory-policy", policy))
        self._lock = threading.RLock()
        self._map = make_policy(self.policy, self.max_bytes, self._on_evict)
        self._spans: dict[tuple[str, str], set[Span]] = {}
        self._gens = Generations()
        self.hits = self.misses = self.evictions = self.rejected = 0

    def __repr__(self) -> str:
        return f"MemoryTier({self.nbytes}/{self.max_bytes} bytes, {self.policy})"

    def __getstate__(self) -> dict[str, Any]:
        # A copy elsewhere starts empty: cached bytes are never shipped between processes.
        return {
            "max_bytes": self.max_bytes,
            "admission_fraction": self.admission_fraction,
            "policy": self.policy,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def nbytes(self) -> int:
        return int(self._map.nbytes)

    def admits(self, nbytes: int) -> bool:
        """Whether a value of ``nbytes`` would be admitted."""
        return bool(self.max_bytes) and nbytes <= self.admission_fraction * self.max_bytes

    # -- the tier protocol --------------------------------------------------------------

    def ticket(self, ns: str, key: str) -> int:
        return self._gens.ticket()

    def get_sync(self, ns: str, key: str, span: Span) -> Entry | None:
        """The cached bytes of ``(key, span)``, cut from a whole-value entry if there is one."""
        with self._lock:
            spans = self._spans.get((ns, key))
            if spans is not None:
                if WHOLE in spans:
                    self.hits += 1
                    entry: Entry = self._map.get((ns, key, WHOLE))
                    if span is WHOLE or entry.data is None:
                        return entry
                    part = slice_whole(memoryview(entry.data), span)
                    return Entry(part, entry.filled_at, entry.token)
                if span in spans:
                    self.hits += 1
                    return self._map.get((ns, key, span))  # type: ignore[no-any-return]
            self.misses += 1
            return None

    def put_sync(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool:
        """Admit ``entry``; False when too large or the key was evicted since ``ticket``."""
        if not self.admits(entry.nbytes):
            with self._lock:
                self.rejected += 1
            return False
        with self._lock:
            if not self._gens.current(ns, key, ticket):
                return False
            self._spans.setdefault((ns, key), set()).add(span)
            self._map.put((ns, key, span), entry, entry.nbytes + _OVERHEAD)
            if (ns, key, span) in self._map:
                return True
            self._forget_span(ns, key, span)
            return False

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None:
        """Forget every cached span of ``key`` (or of every key under the prefix ``key``)."""
        with self._lock:
            self._gens.bump(ns, key, prefix=prefix)
            if prefix:
                doomed = [k for k in self._spans if k[0] == ns and k[1].startswith(key)]
            else:
                doomed = [(ns, key)] if (ns, key) in self._spans else []
            for k in doomed:
                for span in self._spans.pop(k, ()):
                    self._map.discard((*k, span))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "bytes": self.nbytes,
                "entries": len(self._map),
                "evictions": self.evictions,
                "rejected": self.rejected,
                "max_bytes": self.max_bytes,
            }

    def keys(self) -> list[tuple[str, str]]:
        """The ``(ns, key)`` pairs with a cached value (a peer summary is built from them)."""
        with self._lock:
            return [k for k, spans in self._spans.items() if spans]

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._map.clear()

    # -- internals ----------------------------------------------------------------------

    def _forget_span(self, ns: str, key: str, span: Span) -> None:
        spans = self._spans.get((ns, key))
        if spans is not None:
            spans.discard(span)
            if not spans:
                del self._spans[(ns, key)]

    def _on_evict(self, map_key: Hashable, entry: Entry) -> None:
        ns, key, span = map_key  # type: ignore[misc]
        self.evictions += 1
        self._forget_span(ns, key, span)
