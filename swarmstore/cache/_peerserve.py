"""PeerServer: the serving half of peer reads, a handler on each worker's own Dask server.

Another worker (or a client) asks ``swarmstore_peer_get`` over Dask's comms (so TLS
whenever the cluster uses it; no server of our own) for one ``(ns, key, span)``. The
answer is one of:

- ``hit``: the bytes from this worker's RAM or disk tier, with their digest (the xxh3-64
  recorded when they were read from the backing store, which verified them; for a disk
  hit or a cut range, taken now from bytes the disk tier just verified by its block
  checksums);
- ``miss``: not cached here (or only as an absent key, which is not served);
- ``behind``: the reader knows of an invalidation this worker has not applied yet
  (``_coherence.Watermarks``): this worker's copy might be older than the reader's view;
- ``busy``: the serving lane and its queue are full.

Serving has its own bounded lane (``peer-serve-concurrency`` slots, ``peer-serve-queue``
waiting), in the reader's QoS class, so peers never take more than that from a worker's
own work: a RAM hit is served on the event loop, a disk hit in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore import config
from swarmstore.cache._peersummary import Summary, key_hash
from swarmstore.network import Lanes, default_router, qos_classes

if TYPE_CHECKING:
    from swarmstore.cache._coherence import Watermarks
    from swarmstore.cache._span import Span
    from swarmstore.cache._tier import Entry, Tier

__all__ = ["GET", "METRIC", "PeerServer", "span_from_wire", "span_to_wire"]

logger = logging.getLogger(__name__)

#: the worker handler peers call, and the heartbeat metric carrying the summary
GET = "swarmstore_peer_get"
METRIC = "swarmstore-peer-summary"
#: keys filled from the backing store remembered for the summary beyond what RAM holds
_RECENT = 1 << 16


def span_to_wire(span: Span) -> list[Any] | None:
    return None if span is None else list(span)


def span_from_wire(raw: Any) -> Span:
    """A span sent by a peer (msgpack makes tuples lists); ``ValueError`` if malformed."""
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not 2 <= len(raw) <= 3 or raw[0] not in "ros":
        raise ValueError(f"not a span: {raw!r}")
    if not all(isinstance(x, int) for x in raw[1:]) or (raw[0] == "r") != (len(raw) == 3):
        raise ValueError(f"not a span: {raw!r}")
    return tuple(raw)  # type: ignore[return-value]


class PeerServer:
    """Serve this worker's cached values to peers, in a bounded lane of their own.

    ``tiers``: the local tiers to serve from (RAM, disk); ``watermarks``: the invalidations
    this worker has applied. Thread-safe; :meth:`handle` runs on the worker's event loop.
    """

    def __init__(
        self,
        tiers: list[Tier],
        watermarks: Watermarks,
        concurrency: int | None = None,
        queue: int | None = None,
        summary_bits: int | None = None,
    ) -> None:
        self.tiers = tiers
        self.watermarks = watermarks
        slots = int(config.value("cache.peer-serve-concurrency", concurrency))
        self.max_queue = int(config.value("cache.peer-serve-queue", queue))
        self.summary_bits = int(config.value("cache.peer-summary-bits", summary_bits))
        self.timeout = float(config.value("cache.peer-timeout"))
        s = default_router().settings
        self.lanes = Lanes(slots, qos_classes(), s.shares, s.yields, s.yield_window)
        self.served = self.served_bytes = self.misses = self.behind = self.busy = 0
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._summary: tuple[float, bytes] | None = None
        self._hashes: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"PeerServer({self.lanes!r}, served={self.served})"

    async def handle(
        self, comm: Any = None, ns: str = "", key: str = "", span: Any = None,
        after: dict[str, int] | None = None, cls: str | None = None, **kwargs: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Answer one peer read (see the module docstring)."""
        if after and not self.watermarks.covers(after):
            self.behind += 1
            return {"status": "behind"}
        cls = cls if cls in self.lanes.in_use else self.lanes.classes[-1]
        if not await self._slot(cls):
            self.busy += 1
            return {"status": "busy"}
        try:
            entry = await self._lookup(ns, key, span_from_wire(span))
        finally:
            self.lanes.release(cls)
        if entry is None or entry.data is None:
            self.misses += 1
            return {"status": "miss"}
        data = bytes(entry.data)
        digest = entry.digest if entry.digest is not None else xxhash.xxh3_64_intdigest(data)
        self.served += 1
        self.served_bytes += len(data)
        return {
            "status": "hit",
            "data": data,
            "digest": digest,
            "filled_at": entry.filled_at,
            "token": entry.token,
        }

    async def _slot(self, cls: str) -> bool:
        """A serving slot in class ``cls``: at once, or after a bounded wait in a bounded
        queue (past ``peer-timeout`` the reader has given up anyway)."""
        if self.lanes.try_acquire(cls):
            return True
        if self.lanes.queued() >= self.max_queue:
            return False
        try:
            await asyncio.wait_for(self.lanes.acquire(cls), self.timeout)
        except TimeoutError:
            return False
        return True

    async def _lookup(self, ns: str, key: str, span: Span) -> Entry | None:
        for tier in self.tiers:
            entry = await tier.get(ns, key, span)
            if entry is not None:
                return entry
        return None

    # -- the summary sent with heartbeats -----------------------------------------------

    def filled(self, ns: str, key: str) -> None:
        """``key`` was just filled from the backing store here (it may sit on disk only)."""
        with self._lock:
            self._recent[key_hash(ns, key)] = None
            if len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def summary(self, max_age: float = 0.25) -> bytes:
        """The Bloom filter of what this worker may hold (rebuilt at most every ``max_age``)."""
        now = time.monotonic()
        cached = self._summary
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        hashes: dict[tuple[str, str], int] = {}
        known = self._hashes
        for tier in self.tiers:
            keys = getattr(tier, "keys", None)
            if callable(keys):
                for k in keys():
                    hashes[k] = known.get(k) or key_hash(*k)
        self._hashes = hashes  # the keys held now, their hashes kept for the next build
        with self._lock:
            recent = list(self._recent)
        raw = Summary.of([*hashes.values(), *recent], self.summary_bits).to_bytes()
        self._summary = (now, raw)
        return raw

    async def heartbeat_summary(self) -> bytes:
        """:meth:`summary` for a heartbeat: a rebuild runs in a thread, off the event loop."""
        cached = self._summary
        if cached is not None and time.monotonic() - cached[0] < 0.25:
            return cached[1]
        return await asyncio.to_thread(self.summary)

    def stats(self) -> dict[str, int]:
        return {
            "served": self.served,
            "served_bytes": self.served_bytes,
            "misses": self.misses,
            "behind": self.behind,
            "busy": self.busy,
            "in_flight": self.lanes.busy(),
            "queued": self.lanes.queued(),
        }
