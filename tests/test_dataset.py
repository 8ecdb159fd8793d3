"""swarmstore.open_array / open_group / to_dask: cache wiring, chunk annotations, workers."""

from __future__ import annotations

import pathlib
import pickle
from collections import Counter
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from dask.core import flatten
from distributed.utils_test import gen_cluster
from zarr.storage import LocalStore

import swarmstore
from swarmstore.cache import TieredCachePlugin, TieredStore, worker_cache
from swarmstore.dataset import (
    AffinityWarning,
    ChunkReader,
    affinity_config,
    check_affinity,
    open_group,
    to_dask,
)
from swarmstore.errors import ConfigError
from swarmstore.testing.fixtures import close_http


def make(path: pathlib.Path, **kwargs: Any) -> np.ndarray:
    data = np.arange(100 * 60, dtype="f4").reshape(100, 60)
    z = zarr.create_array(LocalStore(path), shape=data.shape, chunks=(10, 20), dtype="f4", **kwargs)
    z[:] = data
    return data


def test_open_array_reads_through_the_process_cache(tmp_path: pathlib.Path) -> None:
    data = make(tmp_path / "a")
    z = swarmstore.open_array(str(tmp_path / "a"))
    assert isinstance(z.store, TieredStore)
    assert z.store._shared is worker_cache(LocalStore(tmp_path / "a"))._shared  # a read-only twin
    np.testing.assert_array_equal(z[:], data)
    hits = z.store.stats()["memory"]["hits"]
    np.testing.assert_array_equal(z[:], data)
    assert z.store.stats()["memory"]["hits"] >= hits + 30
    plain = swarmstore.open_array(f"file://{tmp_path / 'a'}", cache=False)
    assert not isinstance(plain.store, TieredStore)
    own = swarmstore.open_array(tmp_path / "a", cache={"memory_bytes": 2**20, "disk": False})
    assert own.store.memory_bytes == 2**20


def test_open_array_over_s3(s3_endpoint: Any, s3_bucket: str) -> None:
    opts = s3_endpoint.storage_options()
    z = zarr.create_array(
        f"s3://{s3_bucket}/arr", shape=(10,), chunks=(5,), dtype="i2", storage_options=opts
    )
    z[:] = np.arange(10)
    got = swarmstore.open_array(f"s3://{s3_bucket}/arr", storage_options=opts)
    assert isinstance(got.store, TieredStore)
    np.testing.assert_array_equal(got[:], np.arange(10))
    close_http(z.store.fs)
    close_http(got.store.backing.fs)


def test_open_array_over_replicated_nodes(tmp_path: pathlib.Path) -> None:
    nodes = [f"file://{tmp_path / n}" for n in ("n1", "n2", "n3")]
    writer = swarmstore.open_array(
        nodes, mode="w", cache=False, shape=(8,), chunks=(4,), dtype="i4"
    )
    writer[:] = np.arange(8)
    z = swarmstore.open_array(nodes)
    assert type(z.store.backing).__name__ == "ReplicatedStore"
    np.testing.assert_array_equal(z[:], np.arange(8))


def test_replicas_is_honoured_or_refused(tmp_path: pathlib.Path) -> None:
    """open_array([urls], replicas=3) built replicas=2 (issue 14): the argument was dropped."""
    nodes = [f"file://{tmp_path / n}" for n in ("n1", "n2", "n3")]
    for n in ("n1", "n2", "n3"):
        (tmp_path / n).mkdir()
    z = swarmstore.open_array(
        nodes, mode="w", cache=False, replicas=3, shape=(4,), chunks=(2,), dtype="i4"
    )
    assert z.store.replicas == 3
    g = swarmstore.open_group([*nodes[:2]], mode="w", cache=False, replicas=1)
    assert g.store.replicas == 1
    with pytest.raises(ConfigError, match="replicas=3 applies to a list of node URLs"):
        swarmstore.open_array(str(tmp_path / "plain"), mode="w", replicas=3, shape=(1,))
    with pytest.raises(ConfigError, match="storage_options= applies to remote URLs"):
        swarmstore.open_array(str(tmp_path / "plain"), storage_options={"anon": True})
    with pytest.raises(ConfigError, match=r"storage\.replicas .*must be an integer >= 1"):
        swarmstore.open_array(nodes, replicas=0)


def test_open_group(tmp_path: pathlib.Path) -> None:
    root = zarr.open_group(LocalStore(tmp_path / "g"), mode="w")
    root.create_array("x", shape=(4,), chunks=(2,), dtype="i4")[:] = np.arange(4)
    g = open_group(str(tmp_path / "g"))
    assert isinstance(g.store, TieredStore)
    np.testing.assert_array_equal(g["x"][:], np.arange(4))


def test_to_dask_one_task_per_shard_annotated_with_its_chunk_key(tmp_path: pathlib.Path) -> None:
    root = zarr.open_group(LocalStore(tmp_path / "g"), mode="w")
    z = root.create_array("sub/x", shape=(100, 60), chunks=(10, 20), shards=(20, 60), dtype="f4")
    z[:] = 1
    arr = open_group(str(tmp_path / "g"))["sub/x"]
    with affinity_config():
        x = to_dask(arr)
    assert x.chunks == ((20,) * 5, (60,))
    layer = x.__dask_graph__().layers[x.name]
    swarm = layer.annotations["swarm"]
    assert swarm((x.name, 3, 0)) == {"chunk": "sub/x/c/3/0"}
    assert float(x.sum().compute(scheduler="sync")) == 6000.0
    # dask chunks smaller than shards: each block names the shard that holds it
    with affinity_config():
        y = to_dask(arr, chunks=(10, 60))
    assert y.__dask_graph__().layers[y.name].annotations["swarm"]((y.name, 3, 0)) == {
        "chunk": "sub/x/c/1/0"
    }


def test_affinity_lost_to_fusion_is_reported(tmp_path: pathlib.Path) -> None:
    make(tmp_path / "a")
    z = swarmstore.open_array(str(tmp_path / "a"))
    with dask.config.set({"optimization.fuse.active": None}):  # dask's default
        x = to_dask(z)  # no distributed client: no placement to lose, no warning
        with pytest.warns(AffinityWarning, match="lost their swarm chunk annotation"):
            assert len(check_affinity((x + 1).sum())) == 30
    with affinity_config():
        assert check_affinity((x + 1)[:30].T.sum(), warn=False) == []


def test_to_dask_warns_when_client_and_scheduler_would_fuse(tmp_path: pathlib.Path) -> None:
    from distributed import Client, LocalCluster

    make(tmp_path / "a")
    z = swarmstore.open_array(str(tmp_path / "a"))
    with (
        dask.config.set({"optimization.fuse.active": None}),
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        with pytest.warns(AffinityWarning, match="will drop the swarm chunk annotations"):
            to_dask(z)
        with affinity_config():
            to_dask(z)  # the client keeps annotations: no warning


def test_reader_pickles_without_the_cache(tmp_path: pathlib.Path) -> None:
    data = make(tmp_path / "a")
    mine = TieredStore(LocalStore(tmp_path / "a"), memory_bytes=2**20, disk=False)
    with affinity_config():
        x = to_dask(zarr.open_array(mine, mode="r"))
    reader = next(iter(x.__dask_graph__().layers[x.name].values())).func
    assert isinstance(reader, ChunkReader)
    assert reader.store()._shared is mine._shared  # in-process: yours (a read-only twin)
    shipped = pickle.loads(pickle.dumps(reader))
    assert shipped._local is None
    assert shipped.store() is worker_cache(LocalStore(tmp_path / "a"))  # elsewhere: shared
    np.testing.assert_array_equal(shipped((slice(0, 10), slice(0, 20))), data[:10, :20])
    assert len(pickle.dumps(reader)) < 5000


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_tasks_on_a_worker_share_one_cache(c, s, a) -> None:
    await c.register_plugin(TieredCachePlugin(memory_bytes="64MiB", disk_dir=""))
    path = pathlib.Path(a.local_directory) / "arr"
    data = make(path)

    def ident(backing: Any) -> int:
        return id(worker_cache(backing))

    ids = await c.gather([c.submit(ident, LocalStore(path), pure=False) for _ in range(4)])
    assert len(set(ids)) == 1
    with affinity_config():
        x = swarmstore.open_array(str(path), dask=True)
    for _ in range(2):
        total = await c.compute(x.sum())
        assert total == data.sum()
    stats = a.plugins["swarmstore-cache"].stats()
    (backing,) = stats["backing"].values()
    assert backing["reads"] == 30  # each chunk read once, over two passes
    assert stats["memory"]["hits"] >= 30
    assert "disk" not in stats


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3)
async def test_chunk_reads_go_to_their_hash_owner(c, s, *workers) -> None:
    from swarmstore import compute
    from swarmstore.hashing import Member, Rendezvous

    await c.register_plugin(compute.SwarmPlugin())
    await c.register_plugin(TieredCachePlugin(memory_bytes="64MiB", disk_dir=""))
    path = pathlib.Path(workers[0].local_directory) / "arr"
    make(path)
    with affinity_config():
        x = swarmstore.open_array(str(path), dask=True)
        for _ in range(2):
            await c.compute(x.sum())
    reads = sum(
        sum(b["reads"] for b in w.plugins["swarmstore-cache"].stats()["backing"].values())
        for w in workers
    )
    assert reads == 30  # the second pass hit the same workers' caches
    # and each chunk was read by the worker rendezvous hashing picks for it
    # (the ring knows workers by name, so a restarted worker keeps its chunks)
    ring = Rendezvous(Member(f"name:{w.name}") for w in workers)
    by_name = {f"name:{w.name}": w.address for w in workers}
    swarm = x.__dask_graph__().layers[x.name].annotations["swarm"]
    owners = Counter(
        by_name[ring.owner(swarm(k)["chunk"]).name] for k in flatten(x.__dask_keys__())
    )
    assert len(owners) == 3
    for w in workers:
        stats = w.plugins["swarmstore-cache"].stats()["backing"]
        assert sum(b["reads"] for b in stats.values()) == owners[w.address]


def _backing_reads(dask_worker: Any) -> int:
    stats = dask_worker.plugins["swarmstore-cache"].stats()
    return sum(b["reads"] for b in stats.get("backing", {}).values())


def test_in_process_workers_each_read_through_their_own_cache(tmp_path: pathlib.Path) -> None:
    """Regression: in-process workers share one unpickled reader; each must still use the
    cache of the worker running the task (it once kept the first worker's)."""
    from distributed import Client, LocalCluster

    from swarmstore.cache import TieredCachePlugin
    from swarmstore.compute import SwarmPlugin
    from swarmstore.dataset import affinity_config, open_array

    zarr.create_array(str(tmp_path / "a"), shape=(64, 64), chunks=(8, 8), dtype="f4")[:] = 1
    with (
        LocalCluster(
            n_workers=3, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(SwarmPlugin())
        client.register_plugin(TieredCachePlugin(memory_bytes="64MiB"))
        with affinity_config():
            assert float(open_array(str(tmp_path / "a"), dask=True).sum().compute()) == 4096
        reads = sorted(client.run(_backing_reads).values())
    assert sum(reads) >= 64 and min(reads) > 0, reads
