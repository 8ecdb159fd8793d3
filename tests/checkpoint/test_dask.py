"""Dask arrays are encoded and stored by the workers holding their blocks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, get_task_stream

from swarmstore.checkpoint import CheckpointManager


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_workers_write_their_blocks_and_return_only_entries(client, tmp_path):
    x = da.random.default_rng(0).random((64, 64), chunks=(16, 16))  # 16 blocks
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    with get_task_stream(client) as ts:
        info = mgr.save({"x": x, "n": np.arange(3)})
    writes = [t for t in ts.data if "_write_block" in str(t["key"])]
    assert len(writes) == 16
    assert {t["worker"] for t in writes} == set(client.scheduler_info()["workers"])
    # what came back to the client: a small dict per block, never array data
    assert all(t["typename"] == "dict" and t["nbytes"] < 4096 for t in writes)
    assert info.written_objects == 16 + 1
    np.testing.assert_array_equal(mgr.restore()["x"][:], x.compute())
    again = mgr.save({"x": x, "n": np.arange(3)})
    # nothing is re-encoded: every block's and the numpy array's raw bytes are unchanged
    assert again.written_objects == 0 and again.reused_objects == 0
    fresh = CheckpointManager(zarr.storage.LocalStore(tmp_path))  # no fingerprints: encodes
    third = fresh.save({"x": x, "n": np.arange(3)})
    assert third.written_objects == 0 and third.reused_objects == 17


def test_misaligned_dask_chunks_are_rechunked_to_the_zarr_grid(client, tmp_path):
    x = da.arange(100, chunks=(7,)).astype("f4")
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    mgr.save({"x": x}, encoding={"x": {"chunks": (10,), "shards": (20,)}})
    arr = mgr.restore()["x"]
    assert arr.chunks == (10,) and arr.shards == (20,)
    np.testing.assert_array_equal(arr[:], np.arange(100, dtype="f4"))
    assert sorted(k for k in mgr.manifest(0).entries if "/c/" in k) == [
        f"x/c/{i}" for i in range(5)
    ]


def test_workers_write_to_s3_and_the_restore_reads_there(client, s3_store):
    x = da.random.default_rng(1).random((32, 32), chunks=(8, 16))
    mgr = CheckpointManager(s3_store)
    with get_task_stream(client) as ts:
        info = mgr.save({"x": x})
    writes = [t for t in ts.data if "_write_block" in str(t["key"])]
    assert len(writes) == 8 and info.written_objects == 8
    np.testing.assert_array_equal(mgr.restore()["x"][:], x.compute())
    lazy = da.from_zarr(mgr.restore()["x"])  # read back by the workers, through the manifest
    assert float(lazy.sum().compute()) == float(x.sum().compute())


def test_a_dask_save_does_not_re_encode_unchanged_blocks(client, tmp_path):
    x = da.random.default_rng(2).random((64, 64), chunks=(16, 16))
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    first = mgr.save({"x": x}, encoding={"x": {"chunks": (8, 8)}})
    y = x.copy()
    y[0, 0] = -1.0  # one of the 64 zarr chunks changes
    again = mgr.save({"x": y}, encoding={"x": {"chunks": (8, 8)}})
    assert first.written_objects == 64 and again.written_objects == 1
    assert again.reused_objects == 0  # the 63 others were not even encoded
    np.testing.assert_array_equal(mgr.restore()["x"][:], y.compute())
    assert mgr.verify_report().ok
