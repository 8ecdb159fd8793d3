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

    def __init__(self, worker: Worker) -> None:
        self._worker = weakref.ref(worker)
        self._seq = itertools.count()
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
            "seq": next(self._seq),
        }

    def _target(self) -> tuple[Worker, asyncio.AbstractEventLoop] | None:
        worker = self._worker()
        if worker is None or not self.ready or worker.status.name not in ("running", "paused"):
            return None
        return worker, worker.loop.asyncio_loop  # type: ignore[attr-defined]

    def _send(self, worker: Worker, msg: dict[str, Any]) -> None:
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
