"""Coherent caches in a Dask cluster: a write on one worker reaches every worker's tiers
before any task that depends on the write can run.

The path of one invalidation, and why it is ordered:

1. A task writes ``key`` through a TieredStore on worker A. Before ``set`` returns, the
   store puts ``{"op": OP, ns, key, prefix, ...}`` on A's batched stream to the
   scheduler. The task's completion message goes on the same stream later, so the
   scheduler reads the invalidation first.
2. The scheduler's handler (``_relay.CacheCoherence``, a scheduler plugin the workers'
   :class:`~swarmstore.cache.TieredCachePlugin` installs) runs synchronously on receipt
   and puts the message on every subscribed worker's batched stream. Only after that
   does it handle A's completion and send the dependent task to worker B, on the same
   per-worker stream: B reads the invalidation first.
3. B's stream handler drops the key from its RAM tier and its in-flight reads at once,
   and marks it pending in its disk tier (reads of it miss) until the disk tier has
   dropped it in the background, so the event loop never waits on a disk. Workers that
   share A's disk directory skip that: A dropped it there before announcing.

Late or duplicated messages are harmless: a fill records its tier's ticket before its
fetch (``_tier``), so an invalidation that arrives while the old value is in flight
still keeps it out, and an extra invalidation costs one refetch. Duplicates (same origin
and sequence number) are ignored.

Each worker also keeps :class:`Watermarks`: per writer (address and incarnation), the
highest sequence number it has applied or sent. One writer's messages reach every worker
in the order it sent them, so "applied seq n" means "applied all of that writer's
messages up to n". A peer read (``_peer``) carries the reader's watermarks and the peer
serves only when its own cover them: a peer never answers from a cache older than an
invalidation the reader knows of.

Outside a cluster there is no broadcast: use ``ttl`` (revalidation by the backing
store's version token) for writers in other processes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Worker

__all__ = [
    "OP",
    "SUBSCRIBE",
    "Announcer",
    "Seen",
    "Watermarks",
    "announce",
    "announce_sync",
    "disk_identity",
]

logger = logging.getLogger(__name__)

OP = "swarmstore-cache-invalidate"
SUBSCRIBE = "swarmstore_cache_subscribe"
_SEND_TIMEOUT = 30.0

#: the announcers of this process's workers (a store made outside ``worker_cache`` uses
#: the process's only one, as in a worker process of a LocalCluster)
_announcers: weakref.WeakSet[Announcer] = weakref.WeakSet()


class Announcer:
    """Puts one worker's writes on its batched stream, in order, before they return."""

    def __init__(self, worker: Worker, watermarks: Watermarks | None = None) -> None:
        self._worker = weakref.ref(worker)
        self._seq = itertools.count()
        #: tells this incarnation's sequence numbers from a restarted worker's at one address
        self.incarnation = int.from_bytes(os.urandom(6), "big")
        self.watermarks = watermarks
        self.ready = False  # set once the scheduler knows the op (else it would drop the stream)
        self.sent = 0
        _announcers.add(self)

    def message(self, ns: str, key: str, prefix: bool, disk: Any) -> dict[str, Any]:
        return {
            "op": OP,
            "ns": ns,
            "key": key,
            "prefix": prefix,
            "disk": disk_identity(disk),
            "inc": self.incarnation,
        }

    def _target(self) -> tuple[Worker, asyncio.AbstractEventLoop] | None:
        worker = self._worker()
        if worker is None or not self.ready or worker.status.name not in ("running", "paused"):
            return None
        return worker, worker.loop.asyncio_loop  # type: ignore[attr-defined]

    def _send(self, worker: Worker, msg: dict[str, Any]) -> None:
        # Numbered here, on the worker's loop, so the numbers follow the stream's order.
        msg["seq"] = seq = next(self._seq)
        if self.watermarks is not None:
            self.watermarks.note(origin_key(worker.address, self.incarnation), seq)
        worker.batched_send(msg)
        self.sent += 1

    async def announce(self, ns: str, key: str, prefix: bool, disk: Any) -> None:
        target = self._target()
        if target is None:
            return
        worker, loop = target
        msg = self.message(ns, key, prefix, disk)
        if _running_loop() is loop:
            self._send(worker, msg)
            return
        done = asyncio.run_coroutine_threadsafe(_call(self._send, worker, msg), loop)
        await asyncio.wait_for(asyncio.wrap_future(done), _SEND_TIMEOUT)

    def announce_sync(self, ns: str, key: str, prefix: bool, disk: Any) -> None:
        target = self._target()
        if target is None:
            return
        worker, loop = target
        msg = self.message(ns, key, prefix, disk)
        if _running_loop() is loop:
            self._send(worker, msg)
            return
        asyncio.run_coroutine_threadsafe(_call(self._send, worker, msg), loop).result(_SEND_TIMEOUT)


async def _call(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_announcer() -> Announcer | None:
    """The announcer of the worker running the current task, if it has the cache plugin."""
    if "distributed" not in sys.modules:  # no Dask here: no worker (and no costly import)
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    plugin = worker.plugins.get("swarmstore-cache")
    registry = getattr(plugin, "registry", None)
    return getattr(registry, "announcer", None)


def _default_announcer() -> Announcer | None:
    live = [a for a in list(_announcers) if a.ready and a._worker() is not None]
    return live[0] if len(live) == 1 else None


async def announce(announcer: Announcer | None, ns: str, key: str, prefix: bool, disk: Any) -> None:
    """Announce a write of ``key`` (or prefix) to the cluster, if in one with the plugin."""
    announcer = announcer or _default_announcer()
    if announcer is not None:
        await announcer.announce(ns, key, prefix, disk)


def announce_sync(announcer: Announcer | None, ns: str, key: str, prefix: bool, disk: Any) -> None:
    """:func:`announce` from sync code."""
    announcer = announcer or _default_announcer()
    if announcer is not None:
        announcer.announce_sync(ns, key, prefix, disk)


_disk_ids: dict[str, str] = {}


def disk_identity(disk: Any) -> str | None:
    """Which directory on which host a disk tier uses (workers sharing it skip its work)."""
    if disk is None:
        return None
    path = str(disk.path)
    ident = _disk_ids.get(path)
    if ident is None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = _disk_ids[path] = f"{socket.gethostname()}:{st.st_dev}:{st.st_ino}"
    return ident


class Seen:
    """The last messages applied, by (origin, seq): duplicates are skipped."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, origin: str, seq: int) -> bool:
        with self._lock:
            if (origin, seq) in self._seen:
                return False
            self._seen[(origin, seq)] = None
            if len(self._seen) > self.keep:
                self._seen.popitem(last=False)
            return True


def origin_key(origin: str | None, incarnation: Any) -> str:
    """The writer a watermark is kept for: its address and incarnation."""
    return f"{origin}#{incarnation}"


class Watermarks:
    """Per writer, the highest invalidation sequence number this worker applied or sent.

    ``covers(other)`` says whether every invalidation counted in ``other`` (another
    worker's :meth:`snapshot`) has been applied here. Bounded: past ``keep`` writers the
    lowest-numbered half is forgotten, and a forgotten writer is never covered (a
    spurious refusal, never a stale answer).
    """

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._marks: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, origin: str, seq: int) -> None:
        with self._lock:
            if seq > self._marks.get(origin, -1):
                self._marks[origin] = seq
            if len(self._marks) > self.keep:
                for k in sorted(self._marks, key=self._marks.__getitem__)[: self.keep // 2]:
                    del self._marks[k]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._marks)

    def covers(self, other: dict[str, int]) -> bool:
        with self._lock:
            marks = self._marks
            return all(marks.get(origin, -1) >= seq for origin, seq in other.items())
