"""The operator API the CLI uses (issue 14): a verify that reports damage instead of raising,
and a restore into a target that is all or nothing and refuses to overwrite by default."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.core.sync import sync

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._manifest import object_key
from swarmstore.errors import CheckpointExistsError, ChecksumMismatch

ENC = {"x": {"chunks": (10,)}}


def _damaged(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    mgr.save({"x": np.arange(100.0)}, encoding=ENC)
    mgr.save({"x": np.arange(100.0) + 1}, encoding=ENC)
    entries = mgr.manifest(1).entries
    corrupt, missing = entries["x/c/3"][0], entries["x/c/5"][0]
    path = tmp_path / "ckpt" / object_key(corrupt)
    path.write_bytes(b"rotten" + path.read_bytes()[6:])
    (tmp_path / "ckpt" / object_key(missing)).unlink()
    return mgr, corrupt, missing


def test_verify_reports_damage_and_never_raises_it(tmp_path):
    mgr, corrupt, missing = _damaged(tmp_path)
    report = mgr.verify_report()
    assert not report.ok and report.damaged_steps == [1]
    assert report.corrupt == {1: [corrupt]} and report.missing == {1: [missing]}
    assert report.checked == {0: 10, 1: 10}
    assert mgr.verify_report(0).ok
    with pytest.raises(ChecksumMismatch, match="2 of 10"):
        mgr.verify_step(1)


def test_restore_to_a_directory_and_refuse_to_overwrite_without_force(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    mgr.save({"x": np.arange(100.0), "g": {"y": np.ones(3)}}, encoding=ENC)
    mgr.save({"x": np.arange(100.0) * 2}, encoding=ENC)
    target = tmp_path / "out"
    report = mgr.restore_to(str(target), 0)
    assert report.step == 0 and report.keys == 10 + 1 + 4
    g = zarr.open_group(zarr.storage.LocalStore(target), mode="r")
    np.testing.assert_array_equal(g["x"][:], np.arange(100.0))
    with pytest.raises(CheckpointExistsError, match="force=True"):
        mgr.restore_to(str(target), 1)
    mgr.restore_to(zarr.storage.LocalStore(target), 1, force=True)
    g = zarr.open_group(zarr.storage.LocalStore(target), mode="r")
    np.testing.assert_array_equal(g["x"][:], np.arange(100.0) * 2)
    assert "g" not in g  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # no temp left


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_failed_restore_leaves_nothing_behind(tmp_path, kind):
    mgr, _, _ = _damaged(tmp_path)
    target = tmp_path / "out" if kind == "local" else zarr.storage.MemoryStore()
    with pytest.raises(OSError):
        mgr.restore_to(target if kind == "memory" else str(target), 1)
    if kind == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    else:
        assert sync(target.is_empty(""))
    existing = zarr.storage.MemoryStore()
    zarr.create_array(existing, name="keep", shape=(2,), dtype="i1")[:] = 7
    with pytest.raises(OSError):
        mgr.restore_to(existing, 1, force=True)  # damage found before anything changes
    assert zarr.open_array(existing, path="keep", mode="r")[:].tolist() == [7, 7]


def test_restore_to_s3(tmp_path, s3_store):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    mgr.save({"x": np.arange(100.0)}, encoding=ENC)
    mgr.restore_to(s3_store, 0)
    np.testing.assert_array_equal(
        zarr.open_array(s3_store, path="x", mode="r")[:], np.arange(100.0)
    )
