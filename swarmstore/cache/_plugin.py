"""One TieredStore per backing store per Dask worker, shared by every task there, coherent
across the cluster (``_coherence``)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

import swarmstore.cache._coherence as _coherence
from swarmstore import config, metrics
from swarmstore.cache._disk import DiskTier
from swarmstore.cache._identity import store_identity
from swarmstore.cache._memory import MemoryTier
from swarmstore.cache._peer import PeerTier
from swarmstore.cache._peerdir import PeerDirectory
from swarmstore.cache._peerlink import Link
from swarmstore.cache._peerserve import GET, METRIC, PeerServer
from swarmstore.cache._relay import CacheCoherence
from swarmstore.cache._tiered import TieredStore

if TYPE_CHECKING:
    from distributed import Worker
    from zarr.abc.store import Store

__all__ = ["CacheRegistry", "TieredCachePlugin", "worker_cache"]

logger = logging.getLogger(__name__)

_MAX_STORES = 256


class CacheRegistry:
    """Hand out one TieredStore per backing store (by ``store_identity``), all sharing one
    RAM tier and one disk tier, so the process's cache budget holds whatever the stores.

    Settings left as None come from config ``swarmstore.cache.*`` when the registry is made.
    Thread-safe. :meth:`apply_remote` applies another worker's invalidation to the tiers.
    """

    def __init__(
        self,
        memory_bytes: int | str | None = None,
        disk_dir: str | None = None,
        disk_bytes: int | str | None = None,
        ttl: float | str | None = None,
        validate: bool | None = None,
    ) -> None:
        memory_bytes = int(config.value("cache.memory-bytes", memory_bytes))
        fraction = float(config.value("cache.memory-admission-fraction"))
        self.memory = MemoryTier(memory_bytes, fraction)
        disk_dir = disk_dir if disk_dir is not None else config.value("cache.disk-dir")
        self.disk = DiskTier(disk_dir, max_bytes=disk_bytes) if disk_dir else None
        self.ttl = ttl
        self.validate = validate
        self.announcer: _coherence.Announcer | None = None
        #: the invalidations applied or sent here, per writer (peer reads compare them)
        self.watermarks = _coherence.Watermarks()
        #: the peer tier, below the local ones (TieredCachePlugin adds it on a cluster)
        self.peer: PeerTier | None = None
        self.server: PeerServer | None = None
        self.remote_invalidations = 0
        self._seen = _coherence.Seen()
        self._stores: OrderedDict[str, TieredStore] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CacheRegistry({self.memory!r}, {self.disk!r}, {len(self._stores)} stores)"

    @property
    def local_tiers(self) -> list[Any]:
        """RAM and disk: what this process holds (and serves to peers)."""
        return [self.memory] + ([self.disk] if self.disk is not None else [])

    @property
    def tiers(self) -> list[Any]:
        """The chain each store gets: the local tiers, then the peer tier if there is one."""
        return self.local_tiers + ([self.peer] if self.peer is not None else [])

    def get(self, backing: Store) -> TieredStore:
        """The TieredStore over ``backing`` (made on first use, then shared)."""
        if isinstance(backing, TieredStore):
            backing = backing.backing
        ident = store_identity(backing)
        with self._lock:
            store = self._stores.get(ident)
            if store is not None:
                self._stores.move_to_end(ident)
                return store
            store = TieredStore(
                backing,
                tiers=self.tiers,
                ttl=self.ttl,
                validate=self.validate,
                _announce=self.announcer,
            )
            self._stores[ident] = store
            logger.debug("New worker cache for %s", ident)
            while len(self._stores) > _MAX_STORES:  # stores named per object (MemoryStore)
                self._stores.popitem(last=False)
            return store

    def apply_remote(
        self, ns: str, key: str, prefix: bool = False, disk: str | None = None,
        origin: str | None = None, seq: int | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        """Another worker wrote ``key`` in the store ``ns``: drop it here, without blocking.

        RAM and in-flight reads at once; the disk tier in the background (reads of the key
        miss meanwhile), unless it is the writer's own directory, which it already dropped.
        """
        writer = _coherence.origin_key(origin, kwargs.get("inc"))
        if origin is not None and seq is not None and not self._seen.first_time(writer, seq):
            return
        self.remote_invalidations += 1
        self.memory.evict_sync(ns, key, prefix=prefix)
        if self.disk is not None and disk != _coherence.disk_identity(self.disk):
            self.disk.evict_later(ns, key, prefix=prefix)
        with self._lock:
            stores = [s for s in self._stores.values() if s.namespace == ns]
        for store in stores:
            store.drop_remote(key, prefix=prefix)
        if origin is not None and seq is not None:  # after the drops: peers compare this
            self.watermarks.note(writer, seq)

    def stats(self) -> dict[str, Any]:
        """Shared tier counters, and backing-store reads per store."""
        with self._lock:
            stores = dict(self._stores)
        out: dict[str, Any] = {"memory": self.memory.stats()}
        if self.disk is not None:
            out["disk"] = self.disk.stats()
        out["backing"] = {ident: s.stats()["backing"] for ident, s in stores.items()}
        out["coherence"] = {
            "received": self.remote_invalidations,
            "sent": self.announcer.sent if self.announcer is not None else 0,
        }
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        if self.server is not None:
            out["peer_serve"] = self.server.stats()
        return out

    def close(self) -> None:
        """Wait for disk fills and release the disk index (stores stay usable)."""
        if self.disk is not None:
            self.disk.close()


class TieredCachePlugin(WorkerPlugin):
    """Give every task on a worker the same TieredStore for a given backing store.

    Tasks call :func:`worker_cache` (``swarmstore.open_array(..., dask=True)`` does it for
    its chunk reads). Arguments left as None come from config ``swarmstore.cache.*`` on the
    worker, so ``TieredCachePlugin()`` (as ``plugins/worker.py`` installs it) works anywhere.
    Workers on one host may share ``disk_dir``: the disk tier is safe across processes.

    With ``coherence`` (default: ``swarmstore.cache.coherence``), setup installs the
    :class:`~swarmstore.cache.CacheCoherence` scheduler plugin and subscribes
    this worker, so a write through any worker's cache invalidates every worker's tiers
    before a task depending on the write can run.

    With ``peers`` as well (default: ``swarmstore.cache.peers``), a miss in this worker's
    tiers may be served by another worker's cache (:class:`~swarmstore.cache.PeerTier`):
    setup registers the ``swarmstore_peer_get`` handler on the worker (a bounded lane of
    its own), sends a summary of its cached keys with each heartbeat, and installs the
    :class:`~swarmstore.cache.PeerDirectory` scheduler plugin. Peers need coherence (a
    peer must see every write), so without it there is no peer tier.

    Examples
    --------
    >>> plugin = TieredCachePlugin(memory_bytes="256MiB")
    >>> plugin.name
    'swarmstore-cache'
    """

    name = "swarmstore-cache"
    idempotent = True

    def __init__(
        self,
        memory_bytes: int | str | None = None,
        disk_dir: str | None = None,
        disk_bytes: int | str | None = None,
        ttl: float | str | None = None,
        validate: bool | None = None,
        coherence: bool | None = None,
        peers: bool | None = None,
    ) -> None:
        self.peers = peers
        self.options: dict[str, Any] = {
            "memory_bytes": memory_bytes,
            "disk_dir": disk_dir,
            "disk_bytes": disk_bytes,
            "ttl": ttl,
            "validate": validate,
        }
        self.coherence = coherence
        self.registry: CacheRegistry | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "coherence": self.coherence,
            "peers": self.peers,
            "registry": None,
        }

    async def setup(self, worker: Worker) -> None:
        registry = self.registry = CacheRegistry(**self.options)
        metrics.track_worker(worker, self)
        coherent = self.coherence
        if coherent is None:
            coherent = bool(config.value("cache.coherence"))
        if coherent:
            await self._join_coherence(worker, registry)
            if peers_wanted(self.peers):
                await _join_peers(worker, registry)
        logger.info("swarmstore cache on %s: %r", worker.address, registry)

    async def _join_coherence(self, worker: Worker, registry: CacheRegistry) -> None:
        from distributed.protocol.pickle import dumps

        registry.announcer = _coherence.Announcer(worker, registry.watermarks)
        worker.stream_handlers[_coherence.OP] = registry.apply_remote
        await worker.scheduler.register_scheduler_plugin(
            plugin=dumps(CacheCoherence()),
            name=CacheCoherence.name,
            idempotent=True,
        )
        await getattr(worker.scheduler, _coherence.SUBSCRIBE)(worker=worker.address)
        registry.announcer.ready = True

    def teardown(self, worker: Worker) -> None:
        worker.handlers.pop(GET, None)
        worker.metrics.pop(METRIC, None)
        if self.registry is not None:
            if self.registry.announcer is not None:
                self.registry.announcer.ready = False
            self.registry.close()

    def cache_for(self, backing: Store) -> TieredStore:
        """This worker's TieredStore over ``backing``."""
        if self.registry is None:  # used before setup (tests, or a plugin not yet started)
            self.registry = CacheRegistry(**self.options)
        return self.registry.get(backing)

    def stats(self) -> dict[str, Any]:
        """The worker's cache counters (``client.run(lambda dask_worker: ...)``)."""
        return self.registry.stats() if self.registry is not None else {}


def peers_wanted(peers: bool | None) -> bool:
    """Whether a worker reads from peers: ``peers``, else config ``swarmstore.cache.peers``."""
    return bool(config.value("cache.peers", peers))


async def _join_peers(worker: Worker, registry: CacheRegistry) -> None:
    """Serve this worker's tiers to peers, summarise them in heartbeats, read from peers."""
    from distributed.protocol.pickle import dumps

    server = registry.server = PeerServer(registry.local_tiers, registry.watermarks)
    worker.handlers[GET] = server.handle
    worker.metrics[METRIC] = lambda w: server.heartbeat_summary()
    await worker.scheduler.register_scheduler_plugin(
        plugin=dumps(PeerDirectory()), name=PeerDirectory.name, idempotent=True
    )
    registry.peer = PeerTier(Link.of_worker(worker), registry.watermarks, on_fill=server.filled)


_process_registry: CacheRegistry | None = None
_process_lock = threading.Lock()


def worker_cache(backing: Store) -> TieredStore:
    """The TieredStore that tasks in this process share for ``backing``.

    On a Dask worker with :class:`TieredCachePlugin`, the plugin's; anywhere else (the
    client, a threaded scheduler, a worker without the plugin) a process-wide one made from
    config ``swarmstore.cache.*`` on first use.
    """
    plugin = _worker_plugin()
    if plugin is not None:
        return plugin.cache_for(backing)
    global _process_registry
    with _process_lock:
        if _process_registry is None:
            _process_registry = CacheRegistry()
        registry = _process_registry
    return registry.get(backing)


def process_registry() -> CacheRegistry | None:
    """The process-wide registry behind :func:`worker_cache`, if one was made."""
    return _process_registry


def _worker_plugin() -> TieredCachePlugin | None:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    plugin = worker.plugins.get(TieredCachePlugin.name)
    return plugin if isinstance(plugin, TieredCachePlugin) else None
