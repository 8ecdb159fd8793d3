"""The tier protocol: what TieredStore asks of RAM, disk, and any tier added later.

A tier keeps copies of values under ``(ns, key, span)``: ``ns`` keeps stores apart in a
shared tier, ``span`` says which part of the value (see ``_span``). Every method has a
sync form (``*_sync``), used by zarr's sync path with no event loop, and an async form.

Freshness rests on *tickets*, not clocks: before a value is fetched from below, the
caller takes ``tier.ticket(ns, key)``; ``put`` drops the value if the key was evicted
(invalidated) after that ticket was taken, so a slow read can never put back a value a
write just replaced. A ticket is whatever the tier needs (a counter here, a counter and
an index incarnation on disk).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from swarmstore.cache._span import Span

__all__ = ["Entry", "Generations", "SyncTier", "Tier"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached value and what is needed to judge whether it is still fresh."""

    #: The bytes (a read-only view when read from disk), immutable so no reader can change
    #: what the next reader gets; None: the key was absent (a negative entry).
    data: bytes | memoryview | None
    #: Wall time (``swarmstore._clock.wall()``) when the value was read from the backing
    #: store: only for ``ttl``; nothing is ordered by it.
    filled_at: float
    #: The backing store's version token of the key when it was read, or None.
    token: str | None = None
    #: xxh3-64 of ``data`` taken when it was read from the backing store (which verified
    #: it against its checksum record), or None: a peer's answer is checked against it.
    digest: int | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else 0


@runtime_checkable
class Tier(Protocol):
    """One level of a TieredStore: RAM, local disk, GPU memory, a peer's cache...

    ``name`` keys the tier's figures in ``TieredStore.stats()``. ``supports_sync`` is
    False for a tier whose ``get_sync`` cannot be served without an event loop (a peer
    tier): the sync path then treats it as a miss.
    """

    name: str
    supports_sync: bool

    def ticket(self, ns: str, key: str) -> Any: ...

    def get_sync(self, ns: str, key: str, span: Span) -> Entry | None: ...

    async def get(self, ns: str, key: str, span: Span) -> Entry | None: ...

    def put_sync(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool: ...

    async def put(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool: ...

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None: ...

    async def evict(self, ns: str, key: str, *, prefix: bool = False) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class SyncTier:
    """Base for tiers written in sync form: the async forms call the sync ones.

    Set ``blocking = True`` when a sync method does I/O: the async forms then run it in
    a thread, so the event loop never waits on a disk.
    """

    name = "tier"
    supports_sync = True
    blocking = False

    async def get(self, ns: str, key: str, span: Span) -> Entry | None:
        if not self.blocking:
            return self.get_sync(ns, key, span)  # type: ignore[attr-defined, no-any-return]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.get_sync, ns, key, span)  # type: ignore[attr-defined]

    async def put(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool:
        return self.put_sync(ns, key, span, entry, ticket)  # type: ignore[attr-defined, no-any-return]

    async def evict(self, ns: str, key: str, *, prefix: bool = False) -> None:
        if not self.blocking:
            self.evict_sync(ns, key, prefix=prefix)  # type: ignore[attr-defined]
            return
        await asyncio.to_thread(self.evict_sync, ns, key, prefix=prefix)  # type: ignore[attr-defined]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Generations:
    """Per-key generation counters for one process: the tickets of an in-memory tier.

    ``ticket()`` is the current count; ``bump(ns, key)`` (an eviction) moves the count on
    and records it for the key (or prefix). ``current(ns, key, ticket)`` says whether no
    eviction of the key happened since the ticket. The record is bounded: when it grows
    past ``keep`` keys the older half is forgotten and tickets older than what was
    forgotten are refused (a spurious miss, never a stale value).
    """

    def __init__(self, keep: int = 1 << 16) -> None:
        self.keep = keep
        self._count = itertools.count(1)
        self._now = 0
        self._floor = 0
        self._keys: dict[tuple[str, str], int] = {}
        self._prefixes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def ticket(self) -> int:
        return self._now

    def bump(self, ns: str, key: str, *, prefix: bool = False) -> int:
        with self._lock:
            self._now = gen = next(self._count)
            record = self._prefixes if prefix else self._keys
            record[(ns, key)] = gen
            if len(record) > (self.keep >> 6 if prefix else self.keep):
                self._forget_older_half(record)
            return gen

    def current(self, ns: str, key: str, ticket: int) -> bool:
        if ticket < self._floor or self._keys.get((ns, key), 0) > ticket:
            return False
        if not self._prefixes:
            return True
        return not any(
            gen > ticket and p_ns == ns and key.startswith(p)
            for (p_ns, p), gen in list(self._prefixes.items())
        )

    def _forget_older_half(self, record: dict[tuple[str, str], int]) -> None:
        gens = sorted(record.values())
        cut = gens[len(gens) // 2]
        for k in [k for k, g in record.items() if g <= cut]:
            del record[k]
        self._floor = max(self._floor, cut + 1)
