"""TieredStore on zarr's sync path: RAM and disk hits with no event loop, misses through
the backing store's own sync path (a ReplicatedStore over local nodes: still no loop) or
its coroutine, writes invalidating, and the fused pipeline end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore import _sync
from swarmstore.cache import DiskTier, TieredStore
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, FaultyStore
from swarmstore.testing.heldloop import HeldLoop, in_thread

BUF = default_buffer_prototype().buffer
FUSED = "zarr.core.codec_pipeline.FusedCodecPipeline"


def _gets(store: FaultyStore) -> int:
    return store.faults.counts.get("get", 0)


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_hits_need_no_event_loop(tmp_path: Path, tier: str) -> None:
    backing = FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")
    disk = DiskTier(tmp_path / "cache", max_bytes=2**24, fsync=False) if tier == "disk" else False
    store = TieredStore(backing, memory_bytes=2**22 if tier == "memory" else 0, disk=disk)
    store.set_sync("k/0", BUF.from_bytes(b"cached" * 100))
    assert store.get_sync("k/0").to_bytes() == b"cached" * 100  # the miss fills the tier
    store.flush()
    before = _gets(backing)
    with HeldLoop():
        for _ in range(3):
            got = in_thread(lambda: store.get_sync("k/0"))
            assert got.to_bytes() == b"cached" * 100
    assert _gets(backing) == before  # every one a hit
    assert store.stats()[tier]["hits"] >= 3
    store.close()


def test_a_miss_over_a_sync_backing_needs_no_event_loop(tmp_path: Path) -> None:
    roots = [tmp_path / f"n{i}" for i in range(3)]
    for r in roots:
        r.mkdir()
    backing = ReplicatedStore([f"file://{r}" for r in roots], replicas=2,
                              state_dir=str(tmp_path / "state"))  # fmt: skip
    backing.set_sync("k/0", BUF.from_bytes(b"replicated"))  # opens it
    store = TieredStore(backing, memory_bytes=2**22, disk=False)
    with HeldLoop():
        got = in_thread(lambda: store.get_sync("k/0"))  # a miss: the backing's sync path
        assert got.to_bytes() == b"replicated"
        in_thread(lambda: store.set_sync("k/0", BUF.from_bytes(b"rewritten")))
        assert in_thread(lambda: store.get_sync("k/0")).to_bytes() == b"rewritten"
    assert store.stats()["backing"]["reads"] == 2  # the write dropped the cached copy
    _sync.run(backing.aclose())


def test_a_miss_over_an_async_backing_runs_its_coroutine(tmp_path: Path) -> None:
    backing = FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")
    store = TieredStore(backing, memory_bytes=2**22, disk=False)
    store.set_sync("k/0", BUF.from_bytes(b"one"))
    before = _gets(backing)
    assert store.get_sync("k/0").to_bytes() == b"one"
    assert store.get_sync("k/0").to_bytes() == b"one"
    assert _gets(backing) == before + 1  # one miss, then a hit
    store.delete_sync("k/0")
    assert store.get_sync("k/0") is None  # the delete dropped it from RAM


@pytest.mark.parametrize("shards", [None, (4,)])
def test_fused_pipeline_over_tiers_over_replicas(tmp_path: Path, shards) -> None:
    roots = [tmp_path / f"n{i}" for i in range(3)]
    for r in roots:
        r.mkdir()
    backing = ReplicatedStore([f"file://{r}" for r in roots], replicas=2,
                              state_dir=str(tmp_path / "state"))  # fmt: skip
    disk = DiskTier(tmp_path / "cache", max_bytes=2**24, fsync=False)
    store = TieredStore(backing, memory_bytes=2**22, disk=disk)
    data = np.arange(64, dtype="int32")
    with zarr.config.set({"codec_pipeline.path": FUSED}):
        arr = zarr.create_array(store, shape=(64,), chunks=(2,), shards=shards, dtype="int32")
        arr[:] = data
        np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], data)
        arr[0:8] = -1
        data[0:8] = -1
        np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], data)
    assert store.stats()["memory"]["hits"] > 0
    store.close()
    _sync.run(backing.aclose())
