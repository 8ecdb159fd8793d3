"""TieredCachePlugin and worker_cache: one cache per backing store per process/worker."""

from __future__ import annotations

import pathlib
import pickle

import dask
from distributed.utils_test import gen_cluster
from zarr.storage import LocalStore, MemoryStore

from swarmstore.cache import TieredCachePlugin, TieredStore, store_identity, worker_cache
from swarmstore.cache._plugin import CacheRegistry


def test_registry_shares_one_store_per_backing_and_one_budget(tmp_path: pathlib.Path) -> None:
    registry = CacheRegistry(memory_bytes="8MiB", disk_dir=str(tmp_path / "c"), disk_bytes="1GiB")
    a = registry.get(LocalStore(tmp_path / "x"))
    assert registry.get(pickle.loads(pickle.dumps(LocalStore(tmp_path / "x")))) is a
    b = registry.get(LocalStore(tmp_path / "y"))
    assert b is not a and b.memory is a.memory and b.disk is a.disk
    assert a.namespace != b.namespace
    assert registry.get(a) is a  # a TieredStore given: its backing's cache
    assert registry.disk.max_bytes == 2**30 and registry.memory.max_bytes == 8 * 2**20
    assert set(registry.stats()) == {"memory", "disk", "backing", "coherence"}
    registry.close()


def test_plugin_defaults_come_from_config(tmp_path: pathlib.Path) -> None:
    with dask.config.set(
        {
            "swarmstore.cache.disk-dir": str(tmp_path / "cfg"),
            "swarmstore.cache.memory-bytes": "3MiB",
        }
    ):
        plugin = TieredCachePlugin()
        store = plugin.cache_for(MemoryStore())
    assert isinstance(store, TieredStore)
    assert store.memory_bytes == 3 * 2**20 and store.disk.path == tmp_path / "cfg"
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.registry is None and copy.options == plugin.options
    assert plugin.name == "swarmstore-cache" and plugin.idempotent
    plugin.registry.close()


def test_worker_cache_off_a_worker_is_process_wide(tmp_path: pathlib.Path) -> None:
    one = worker_cache(LocalStore(tmp_path / "x"))
    assert worker_cache(LocalStore(tmp_path / "x")) is one
    assert store_identity(LocalStore(tmp_path / "x")) == store_identity(one.backing)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_plugin_installs_on_every_worker(c, s, a, b) -> None:
    await c.register_plugin(TieredCachePlugin(memory_bytes="16MiB", disk_dir=""))

    def describe(backing: object) -> tuple[int, int]:
        store = worker_cache(backing)
        return id(store), store.memory_bytes

    for w in (a, b):
        first = await c.submit(describe, MemoryStore(), workers=[w.address], pure=False)
        assert first[1] == 16 * 2**20
        assert w.plugins["swarmstore-cache"].registry is not None
