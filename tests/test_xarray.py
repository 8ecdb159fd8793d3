"""xarray over swarmstore: ``to_zarr`` into a ReplicatedStore (local nodes + S3 on moto),
``xr.open_zarr`` back through ``TieredStore(ReplicatedStore(...))``, and checkpoints opened
with ``xr.open_zarr(CheckpointManager.open_store(step))``.

Zarr v3 has no consolidated metadata in its specification: ``to_zarr`` consolidates by
default (zarr warns) and ``open_zarr`` looks for it by default (xarray warns when it is
absent). The tests pass ``consolidated=False`` on both sides, as docs/checkpoint.md
recommends, except one that checks the defaults work too.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.sync import sync

from swarmstore.cache import DiskTier, TieredStore
from swarmstore.checkpoint import CheckpointManager
from swarmstore.storage import NodeSpec, ReplicatedStore

CHUNKS = {"temperature": {"chunks": (6, 16, 16)}, "pressure": {"chunks": (6, 32, 32)}}


def dataset(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "temperature": (("time", "y", "x"), rng.normal(15, 5, (12, 32, 32)).astype("f4")),
            "pressure": (("time", "y", "x"), rng.uniform(950, 1050, (12, 32, 32))),
        },
        coords={
            "time": np.arange(12),
            "y": np.linspace(-1, 1, 32),
            "x": np.linspace(0, 2, 32),
        },
        attrs={"title": "swarmstore xarray test", "seed": seed},
    )


@pytest.fixture
def replicated(tmp_path: pathlib.Path, s3_store_factory: Any) -> Any:
    """Two local nodes and one S3 node; 3 replicas, so every node holds every key."""
    nodes = [NodeSpec(f"file://{tmp_path}/node{i}", zone=f"rack{i}") for i in range(2)]
    nodes.append(NodeSpec(s3_store_factory("node2"), name="s3", zone="cloud"))
    store = ReplicatedStore(nodes, replicas=3, state_dir=tmp_path / "state")
    yield store
    sync(store.aclose())


def tiered(store: Any, tmp_path: pathlib.Path) -> TieredStore:
    return TieredStore(store, memory_bytes="16MiB", disk=DiskTier(tmp_path / "cache", fsync=False))


def test_open_zarr_through_tiered_replicated(replicated: Any, tmp_path: pathlib.Path) -> None:
    ds = dataset()
    ds.to_zarr(replicated, consolidated=False, encoding=CHUNKS)
    cache = tiered(replicated, tmp_path)

    opened = xr.open_zarr(cache, consolidated=False)
    assert opened.temperature.chunks == ((6, 6), (16, 16), (16, 16))  # zarr chunks -> dask
    xr.testing.assert_identical(opened.compute(), ds)
    first = cache.stats()
    assert first["backing"]["reads"] > 0

    again = xr.open_zarr(cache, consolidated=False).compute()
    xr.testing.assert_identical(again, ds)
    second = cache.stats()
    assert second["backing"]["reads"] == first["backing"]["reads"]  # served from the cache
    assert second["memory"]["hits"] - first["memory"]["hits"] >= first["backing"]["reads"]
    cache.disk.flush()
    cache.close()


def test_disk_tier_serves_a_new_process_view(replicated: Any, tmp_path: pathlib.Path) -> None:
    """A fresh TieredStore over the same disk directory (a restarted worker) reads nothing
    from the replicas."""
    ds = dataset(1)
    ds.to_zarr(replicated, consolidated=False, encoding=CHUNKS)
    warm = tiered(replicated, tmp_path)
    xr.open_zarr(warm, consolidated=False).load()
    warm.disk.flush()
    fresh = tiered(replicated, tmp_path)
    xr.testing.assert_identical(xr.open_zarr(fresh, consolidated=False).compute(), ds)
    stats = fresh.stats()
    assert stats["backing"]["reads"] == 0
    assert stats["disk"]["hits"] > 0
    warm.disk.close()
    fresh.disk.close()


def test_selection_reads_only_its_chunks(replicated: Any, tmp_path: pathlib.Path) -> None:
    ds = dataset(2)
    ds.to_zarr(replicated, consolidated=False, encoding=CHUNKS)
    cache = tiered(replicated, tmp_path)
    opened = xr.open_zarr(cache, consolidated=False)
    before = cache.stats()["backing"]["reads"]
    point = opened.temperature.isel(time=0, y=slice(0, 16), x=slice(0, 16)).values
    np.testing.assert_array_equal(point, ds.temperature.values[0, :16, :16])
    assert cache.stats()["backing"]["reads"] - before == 1  # one chunk of temperature
    cache.disk.close()


def test_every_node_is_plain_zarr_for_xarray(
    replicated: Any, s3_store_factory: Any, tmp_path: pathlib.Path
) -> None:
    """With R = number of nodes, plain xarray opens any single node, S3 included."""
    ds = dataset(3)
    ds.to_zarr(replicated, consolidated=False, encoding=CHUNKS)
    xr.testing.assert_identical(
        xr.open_zarr(zarr.storage.LocalStore(tmp_path / "node0"), consolidated=False).compute(),
        ds,
    )
    s3_node = s3_store_factory("node2", read_only=True)
    xr.testing.assert_identical(xr.open_zarr(s3_node, consolidated=False).compute(), ds)


def test_dataset_update_is_seen_through_the_cache(replicated: Any, tmp_path: pathlib.Path) -> None:
    """A region written through the cache is read back new, never stale."""
    ds = dataset(4)
    cache = tiered(replicated, tmp_path)
    ds.to_zarr(cache, consolidated=False, encoding=CHUNKS)
    xr.open_zarr(cache, consolidated=False).load()
    changed = ds.isel(time=slice(0, 6)).copy(deep=True)
    changed["temperature"][:] = -1.0
    changed[["temperature"]].drop_vars(["y", "x"]).to_zarr(
        cache, region={"time": slice(0, 6)}, consolidated=False
    )
    back = xr.open_zarr(cache, consolidated=False).compute()
    assert float(back.temperature.isel(time=slice(0, 6)).max()) == -1.0
    xr.testing.assert_equal(
        back.temperature.isel(time=slice(6, 12)), ds.temperature.isel(time=slice(6, 12))
    )
    cache.disk.close()


@pytest.mark.filterwarnings(
    # zarr's own warning whenever consolidated metadata is written in format 3; the point of
    # this test is that xarray's defaults (consolidate on write, look for it on read) work
    "ignore:Consolidated metadata is currently not part:zarr.errors.ZarrUserWarning"
)
def test_xarray_defaults_with_consolidated_metadata(
    replicated: Any, tmp_path: pathlib.Path
) -> None:
    ds = dataset(5)
    ds.to_zarr(replicated, encoding=CHUNKS)
    cache = tiered(replicated, tmp_path)
    xr.testing.assert_identical(xr.open_zarr(cache).compute(), ds)
    cache.disk.close()


def test_checkpoint_restore_opens_with_xarray(replicated: Any, tmp_path: pathlib.Path) -> None:
    """Checkpoints of Dataset.to_zarr groups, in the replicated store behind the cache."""
    cache = tiered(replicated, tmp_path)
    mgr = CheckpointManager(cache, keep_last=3)
    versions = {}
    for step, seed in ((10, 6), (20, 7)):
        ds = dataset(seed)
        scratch = zarr.storage.MemoryStore()
        ds.to_zarr(scratch, consolidated=False, encoding=CHUNKS)
        mgr.save(zarr.open_group(scratch, mode="r"), step=step, metadata={"seed": seed})
        versions[step] = ds
    assert [c.step for c in mgr.list()] == [10, 20]
    for step, ds in versions.items():
        restored = xr.open_zarr(mgr.open_store(step), consolidated=False)
        xr.testing.assert_identical(restored.compute(), ds)
    diff = mgr.diff(10, 20)
    assert "temperature" in diff.nodes and "pressure" in diff.nodes
    assert "time/c/0" not in diff.changed  # the unchanged coordinate was reused
    mgr.close()
    cache.disk.close()


def test_checkpoint_of_dask_backed_dataset(replicated: Any, tmp_path: pathlib.Path) -> None:
    """A lazily opened (dask) variable saved as a checkpoint, restored with xarray."""
    ds = dataset(8)
    ds.to_zarr(replicated, consolidated=False, encoding=CHUNKS)
    cache = tiered(replicated, tmp_path)
    lazy = xr.open_zarr(cache, consolidated=False)
    anomaly = lazy.temperature - lazy.temperature.mean("time")
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    mgr.save(
        {"anomaly": anomaly.data},
        step=0,
        encoding={"anomaly": {"dimension_names": anomaly.dims}},
    )
    restored = xr.open_zarr(mgr.open_store(0), consolidated=False)
    np.testing.assert_allclose(restored.anomaly.values, anomaly.values, rtol=1e-6)
    assert restored.anomaly.dims == ("time", "y", "x")
    mgr.close()
    cache.disk.close()
