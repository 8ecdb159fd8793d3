"""archive(step, to): one checkpoint copied into another store, checked, committed there."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._manifest import object_key
from swarmstore.errors import CheckpointExistsError, ChecksumMismatch
from swarmstore.storage import ReplicatedStore

ENC = {"x": {"chunks": (8, 8)}}


def _state(step: int) -> np.ndarray:
    x = np.arange(32 * 32, dtype="f8").reshape(32, 32)
    x[: 8 * (step + 1), :8] = -step  # one more chunk changes per step
    return x


def _source(tmp_path) -> CheckpointManager:
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "src"))
    for step in range(3):
        mgr.save({"x": _state(step)}, step=step, encoding=ENC)
    return mgr


def _replicated(tmp_path) -> ReplicatedStore:
    """Three node directories, two replicas of everything (W = R = 2)."""
    nodes = [f"file://{tmp_path}/node{i}" for i in range(3)]
    return ReplicatedStore(nodes, replicas=2, write_quorum=2, state_dir=str(tmp_path / "st"))


def _objects(mgr: CheckpointManager, step: int) -> set[str]:
    return {e[0] for e in mgr.manifest(step).entries.values() if isinstance(e, tuple) and e[1]}


def test_an_archive_in_a_replicated_store_restores_verifies_and_survives_a_node_loss(tmp_path):
    mgr = _source(tmp_path)
    dst = _replicated(tmp_path)
    report = mgr.archive(1, to=dst)
    assert report.copied_objects == len(_objects(mgr, 1))
    assert report.skipped_objects == report.repaired_objects == 0
    there = CheckpointManager(dst)
    assert there.steps() == [1]
    assert there.verify_report().ok
    assert np.array_equal(there.restore(1)["x"][:], _state(1))
    assert mgr.archive(1, to=dst).copied_objects == 0  # archived already: nothing to do
    second = mgr.archive(2, to=dst)  # beside it, reusing the objects both name
    assert second.skipped_objects == len(_objects(mgr, 1) & _objects(mgr, 2))
    dst.flush_sync()  # every copy written before a node goes
    shutil.rmtree(tmp_path / "node0")  # R - 1 = 1 node lost
    fresh = CheckpointManager(_replicated(tmp_path))
    assert fresh.steps() == [1, 2]
    for step in (1, 2):
        assert np.array_equal(fresh.restore(step)["x"][:], _state(step))


def test_an_archive_in_a_plain_local_store_is_a_checkpoint_there(tmp_path):
    mgr = _source(tmp_path)
    dst = zarr.storage.LocalStore(tmp_path / "dst")
    mgr.archive(0, to=dst)
    there = CheckpointManager(dst)
    assert [c.step for c in there.list()] == [0]
    assert np.array_equal(there.restore(0)["x"][:], _state(0))
    assert there.verify_report().ok


def test_a_source_object_that_fails_its_check_fails_the_archive_and_commits_nothing(tmp_path):
    mgr = _source(tmp_path)
    digest = sorted(_objects(mgr, 2))[0]
    path = tmp_path / "src" / object_key(digest)
    path.write_bytes(b"not what was saved")
    dst = zarr.storage.LocalStore(tmp_path / "dst")
    with pytest.raises(ChecksumMismatch, match=digest[2:]):
        mgr.archive(2, to=dst)
    assert CheckpointManager(dst).steps() == []


def test_a_bad_copy_already_in_the_target_is_written_again(tmp_path):
    mgr = _source(tmp_path)
    dst = zarr.storage.LocalStore(tmp_path / "dst")
    mgr.archive(1, to=dst)
    shared = sorted(_objects(mgr, 1) & _objects(mgr, 2))[0]
    (tmp_path / "dst" / object_key(shared)).write_bytes(b"bit rot")
    assert not CheckpointManager(dst).verify_report().ok
    report = mgr.archive(2, to=dst)
    assert report.repaired_objects == 1
    there = CheckpointManager(dst)
    assert there.verify_report().ok  # step 1 reads again too: the object is whole
    assert np.array_equal(there.restore(2)["x"][:], _state(2))


def test_a_target_holding_another_checkpoint_of_the_step_is_refused_before_any_copy(tmp_path):
    mgr = _source(tmp_path)
    dst = zarr.storage.LocalStore(tmp_path / "dst")
    CheckpointManager(dst).save({"y": np.ones(4)}, step=1)
    before = sorted(p.name for p in (tmp_path / "dst").rglob("*") if p.is_file())
    with pytest.raises(CheckpointExistsError, match="step 1"):
        mgr.archive(1, to=dst)
    assert sorted(p.name for p in (tmp_path / "dst").rglob("*") if p.is_file()) == before


def test_an_archive_to_an_erasure_coded_node_set_restores_after_losing_m_nodes(tmp_path):
    """archive(step, to=coded_store): the chunk objects RS(4,2) over six directories (1.5x
    the bytes), the documents that move (refs) replicated R=3 with W=3 (so Rq=1, like the
    code's k+m write quorum, survives any 2 losses); losing m = 2 nodes loses nothing."""
    from swarmstore.storage._fragments import Coding

    mgr = _source(tmp_path)
    nodes = [f"file://{tmp_path}/ec{i}" for i in range(6)]

    def coded() -> ReplicatedStore:
        return ReplicatedStore(
            nodes,
            replicas=3,
            write_quorum=3,
            coding={"objects/": (4, 2)},
            state_dir=str(tmp_path / "est"),
        )

    dst = coded()
    report = mgr.archive(2, to=dst)
    assert report.copied_objects == len(_objects(mgr, 2))
    some = next(iter(_objects(mgr, 2)))
    assert dst.coding_for(object_key(some)) == Coding(4, 2)
    assert dst.coding_for("refs/main") is None  # moved by conditional puts: replicated
    dst.flush_sync()
    for i in (1, 4):
        shutil.rmtree(tmp_path / f"ec{i}")
    fresh = CheckpointManager(coded())
    assert fresh.steps() == [2] and fresh.verify_report().ok
    assert np.array_equal(fresh.restore(2)["x"][:], _state(2))
