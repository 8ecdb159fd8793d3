"""ReplicatedStore's sync fast path: get/set/delete in the calling thread over local and
memory nodes, verified, failing over, hints respected, and the loop path for the rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LoggingStore, MemoryStore

from swarmstore import _sync
from swarmstore.storage import ReplicatedStore
from swarmstore.storage._memory import MemoryNode
from swarmstore.testing.heldloop import HeldLoop, in_thread

BUF = default_buffer_prototype().buffer
FUSED = "zarr.core.codec_pipeline.FusedCodecPipeline"


def _poll(cond, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _roots(tmp_path: Path, n: int) -> list[Path]:
    roots = [tmp_path / f"n{i}" for i in range(n)]
    for r in roots:
        r.mkdir()
    return roots


@pytest.fixture
def local_store(tmp_path: Path):
    roots = _roots(tmp_path, 3)
    store = ReplicatedStore(
        [f"file://{r}" for r in roots], replicas=3, state_dir=str(tmp_path / "state")
    )
    store.set_sync("warmup", BUF.from_bytes(b"x"))  # opens the store (loop path once)
    yield store, roots
    _sync.run(store.aclose())


def test_sync_io_flag_follows_the_nodes(tmp_path: Path) -> None:
    roots = _roots(tmp_path, 2)
    mixed = [f"file://{roots[0]}", MemoryNode(), f"file://{roots[1]}"]
    assert ReplicatedStore(mixed, replicas=2, state_dir=str(tmp_path / "s1"))._supports_sync_io
    generic = [f"file://{roots[0]}", LoggingStore(MemoryStore()), f"file://{roots[1]}"]
    store = ReplicatedStore(generic, replicas=2, state_dir=str(tmp_path / "s2"))
    assert not store._supports_sync_io
    store.set_sync("k", BUF.from_bytes(b"generic"))  # the loop path still serves it
    assert store.get_sync("k").to_bytes() == b"generic"


def test_get_set_delete_run_without_the_io_loop(local_store) -> None:
    store, _ = local_store
    with HeldLoop():
        in_thread(lambda: store.set_sync("a/0", BUF.from_bytes(b"hello")))
        got = in_thread(lambda: store.get_sync("a/0"))
        assert got is not None and got.to_bytes() == b"hello"
        rng = zarr.abc.store.RangeByteRequest(1, 4)
        part = in_thread(lambda: store.get_sync("a/0", byte_range=rng))
        assert part.to_bytes() == b"ell"
        in_thread(lambda: store.delete_sync("a/0"))
        assert in_thread(lambda: store.get_sync("a/0")) is None
        in_thread(lambda: store.delete_sync("never/written"))  # absent: a no-op
    assert _sync.run(store.get("a/0", default_buffer_prototype())) is None


def test_corrupt_replica_fails_over_and_is_repaired(local_store) -> None:
    store, _ = local_store
    store.set_sync("c/0", BUF.from_bytes(b"A" * 4096))
    first = store.targets("c/0")[0]
    path = first.root / "c/0"
    with open(path, "r+b") as f:  # bit rot in place: the xattr record stays
        f.seek(10)
        f.write(b"Z")
    for _ in range(3):  # whichever replica the router tries first
        assert store.get_sync("c/0").to_bytes() == b"A" * 4096
    _poll(lambda: path.read_bytes() == b"A" * 4096, "read repair of the corrupt replica")


def test_stale_hinted_replica_is_never_served(local_store, tmp_path: Path) -> None:
    store, _ = local_store
    store.set_sync("h/0", BUF.from_bytes(b"old"))
    target = store.targets("h/0")[0]
    away = tmp_path / "away"
    target.root.rename(away)  # the node is down: the write misses it and leaves a hint
    try:
        store.set_sync("h/0", BUF.from_bytes(b"new"))
    finally:
        away.rename(target.root)
    assert target.name in store.hints.stale_nodes("h/0")
    assert (target.root / "h/0").read_bytes() == b"old"
    for _ in range(5):
        assert store.get_sync("h/0").to_bytes() == b"new"
    store.set_sync("h/0", BUF.from_bytes(b"newer"))  # reaches the node: the hint is obsolete
    assert target.name not in store.hints.stale_nodes("h/0")
    assert (target.root / "h/0").read_bytes() == b"newer"


def test_stale_replica_without_a_hint_is_outvoted(tmp_path: Path) -> None:
    roots = _roots(tmp_path, 3)
    store = ReplicatedStore([f"file://{r}" for r in roots], replicas=3, write_quorum=2,
                            state_dir=str(tmp_path / "state"))  # fmt: skip
    store.set_sync("s/0", BUF.from_bytes(b"v1"))
    node = store.targets("s/0")[0]
    saved = tmp_path / "saved"
    (node.root / "s/0").rename(saved)  # keeps its xattr record (version 1)
    store.set_sync("s/0", BUF.from_bytes(b"v2"))
    saved.rename(node.root / "s/0")  # the old version is back, and nobody knows
    assert store.hints.count() == 0
    for _ in range(5):
        assert store.get_sync("s/0").to_bytes() == b"v2"
    _sync.run(store.aclose())


def test_concurrent_sync_writers_leave_replicas_agreeing(local_store) -> None:
    store, _ = local_store
    barrier = threading.Barrier(6)

    def writer(i: int) -> None:
        barrier.wait(30)
        for j in range(20):
            store.set_sync("race", BUF.from_bytes(f"{i}-{j}".encode()))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    held = {(n.state_now("race").record.version, n.read_now("race").data) for n in store.nodes}
    assert len(held) == 1, held  # one version, one value, on every replica
    assert store.get_sync("race").to_bytes() == held.pop()[1]


@pytest.mark.parametrize("shards", [None, (4,)])
def test_fused_pipeline_round_trip(tmp_path: Path, shards) -> None:
    roots = _roots(tmp_path, 2)
    nodes = [f"file://{roots[0]}", MemoryNode(), f"file://{roots[1]}"]
    store = ReplicatedStore(nodes, replicas=2, state_dir=str(tmp_path / "state"))
    data = np.arange(64, dtype="int32")
    with zarr.config.set({"codec_pipeline.path": FUSED}):
        arr = zarr.create_array(store, shape=(64,), chunks=(2,), shards=shards, dtype="int32")
        arr[:] = data
        arr[8:16] = 0  # whole fill-value chunks: the pipeline deletes them
        expect = data.copy()
        expect[8:16] = 0
        np.testing.assert_array_equal(zarr.open_array(store)[:], expect)
    np.testing.assert_array_equal(zarr.open_array(store)[:], expect)  # default pipeline too
    _sync.run(store.aclose())
