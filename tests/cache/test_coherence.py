"""Coherent caches on a Dask cluster (issue 12): a task that depends on a write task never
reads the key's old value from any worker's RAM or disk tier.

Each round warms every worker's cache with the current value, then writes a new value on
one worker and reads it, in a task that depends on the write, on another. With coherence
off the same rounds read stale values, so the test can fail.
"""

from __future__ import annotations

import pathlib

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from distributed.utils_test import gen_cluster
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from swarmstore.cache import TieredCachePlugin, TieredStore, worker_cache
from swarmstore.testing import Faults, FaultyStore


def read(backing: LocalStore, key: str, *deps: object, sync_path: bool = False) -> bytes | None:
    store = worker_cache(backing)
    got = store.get_sync(key) if sync_path else sync(store.get(key, default_buffer_prototype()))
    return None if got is None else got.to_bytes()


def write(backing: LocalStore, key: str, value: bytes, *, sync_path: bool = False) -> None:
    store = worker_cache(backing)
    if sync_path:
        store.set_sync(key, cpu.Buffer.from_bytes(value))
    else:
        sync(store.set(key, cpu.Buffer.from_bytes(value)))


async def stale_reads(c: Client, backing: LocalStore, workers: list[str], rounds: int) -> int:
    """Write on one worker, read on another after it; the number of old values read."""
    stale = 0
    for i in range(rounds):
        key, sync_path = f"c/{i % 3}", i % 2 == 0
        warm = [
            c.submit(read, backing, key, workers=[w], pure=False, sync_path=sync_path)
            for w in workers
        ]
        await c.gather(warm)  # every worker now caches the current value
        a, b = workers[i % len(workers)], workers[(i + 1) % len(workers)]
        new = f"v{i + 1}".encode() * (1 + i % 4)
        done = c.submit(write, backing, key, new, workers=[a], pure=False, sync_path=not sync_path)
        got = await c.submit(read, backing, key, done, workers=[b], pure=False, sync_path=sync_path)
        stale += got != new
    return stale


async def seed(backing: LocalStore) -> None:
    for i in range(3):
        await backing.set(f"c/{i}", cpu.Buffer.from_bytes(b"v0"))


# zarr's I/O loop and its executor threads outlive every test: not leaks of this one
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, clean_kwargs={"threads": False})
async def test_dependent_reads_never_see_an_old_value(c, s, *workers):
    backing = LocalStore(pathlib.Path(s.local_directory) / "data")
    await seed(backing)
    await c.register_plugin(TieredCachePlugin(memory_bytes="16MiB", disk_dir="", coherence=True))
    assert await stale_reads(c, backing, [w.address for w in workers], rounds=24) == 0
    relay = s.plugins["swarmstore-cache-coherence"]
    assert relay.subscribers == {w.address for w in workers} and relay.relayed >= 24


# zarr's I/O loop and its executor threads outlive every test: not leaks of this one
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, clean_kwargs={"threads": False})
async def test_without_coherence_the_same_reads_are_stale(c, s, *workers):
    backing = LocalStore(pathlib.Path(s.local_directory) / "data")
    await seed(backing)
    await c.register_plugin(TieredCachePlugin(memory_bytes="16MiB", disk_dir="", coherence=False))
    assert await stale_reads(c, backing, [w.address for w in workers], rounds=12) > 0
    assert "swarmstore-cache-coherence" not in s.plugins


def zarr_write(backing: LocalStore, value: int, length: int) -> None:
    z = zarr.open_array(worker_cache(backing), mode="r+")
    z.resize((length,))
    z[:] = value


def zarr_read(backing: LocalStore, *deps: object) -> tuple[int, float]:
    z = zarr.open_array(worker_cache(backing), mode="r")
    data = z[:]
    return len(data), float(data.max())


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, clean_kwargs={"threads": False})
async def test_zarr_metadata_and_chunks_are_coherent(c, s, a, b):
    """A resize and an overwrite on one worker: the next task on the other sees both."""
    backing = LocalStore(pathlib.Path(s.local_directory) / "arr")
    zarr.create_array(backing, shape=(100,), chunks=(10,), dtype="f8")[:] = 0
    await c.register_plugin(TieredCachePlugin(memory_bytes="16MiB", disk_dir="", coherence=True))
    for i in range(1, 7):
        for w in (a, b):  # both cache the array as it is
            await c.submit(zarr_read, backing, workers=[w.address], pure=False)
        writer, reader = (a, b) if i % 2 else (b, a)
        done = c.submit(zarr_write, backing, i, 100 + 10 * i, workers=[writer.address], pure=False)
        got = await c.submit(zarr_read, backing, done, workers=[reader.address], pure=False)
        assert got == (100 + 10 * i, float(i))


def use_disk_dir(path: str) -> None:
    dask.config.set({"swarmstore.cache.disk-dir": path})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_processes_with_shared_and_separate_disk_tiers(tmp_path: pathlib.Path) -> None:
    """Real processes, disk tiers only (no RAM): workers 0 and 1 share a directory, worker 2
    has its own. Coherence off first (stale reads show the test can fail), then on."""
    backing = LocalStore(tmp_path / "data")
    sync(seed(backing))
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0")
        as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        workers = sorted(client.scheduler_info()["workers"])
        for w, d in zip(workers, ("shared", "shared", "own"), strict=True):
            client.run(use_disk_dir, str(tmp_path / d), workers=[w])
        for coherence, check in ((False, lambda n: n > 0), (True, lambda n: n == 0)):
            plugin = TieredCachePlugin(memory_bytes=0, disk_bytes="64MiB", coherence=coherence)
            client.register_plugin(plugin)
            stale = client.sync(stale_reads, client, backing, workers, rounds=6)
            assert check(stale), (coherence, stale)
            client.unregister_worker_plugin(TieredCachePlugin.name)


def test_reads_outside_a_cluster_revalidate_by_version_token(tmp_path: pathlib.Path) -> None:
    """No cluster: after ``ttl`` a hit is revalidated by the cheap token, not refetched."""
    faulty = FaultyStore(LocalStore(tmp_path / "d"), Faults())
    store = zarr.create_array(faulty, shape=(10,), chunks=(10,), dtype="i4")
    store[:] = np.arange(10)
    cached = TieredStore(faulty, memory_bytes=2**20, disk=False, ttl=0.0)
    z = zarr.open_array(cached, mode="r")
    z[:]
    gets = faulty.faults.counts["get"]
    np.testing.assert_array_equal(z[:], np.arange(10))  # expired: token checked, same value
    assert faulty.faults.counts["get"] == gets  # no refetch
    zarr.open_array(LocalStore(tmp_path / "d"), mode="r+")[:] = 7  # another writer
    np.testing.assert_array_equal(zarr.open_array(cached, mode="r")[:], np.full(10, 7))
