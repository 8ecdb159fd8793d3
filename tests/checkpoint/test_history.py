"""History (issue 18): snapshot ids and parents, branches, tags, time travel, log, diff,
and schema-1 checkpoints that stay readable."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from swarmstore.checkpoint import CheckpointManager, Manifest, content_hash
from swarmstore.checkpoint._manifest import manifest_key, object_key
from swarmstore.errors import CheckpointExistsError, CheckpointNotFoundError

ENC = {"x": {"chunks": (4,)}}


def _saves(mgr, n, start=0):
    x = np.ones(16)
    infos = []
    for step in range(start, start + n):
        x[(step * 4) % 16] = step + 10  # one chunk changes per step
        infos.append(mgr.save({"x": x}, step=step, metadata={"v": step}, encoding=ENC))
    return infos


def test_snapshots_have_ids_and_parents_and_the_log_shows_them(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    infos = _saves(mgr, 3)
    assert len({i.id for i in infos}) == 3
    assert [i.parent_id for i in infos] == [None, infos[0].id, infos[1].id]
    assert [i.parent for i in infos] == [None, 0, 1]
    log = mgr.log()
    assert [c.id for c in log] == [i.id for i in reversed(infos)]
    assert log[0].metadata == {"v": 2}
    with mgr.session() as s:
        zarr.open_array(s.store, path="x", mode="r+")[0] = -1
        snap = s.commit(message="fix the first value")
    assert mgr.log()[0].message == "fix the first value" and snap.parent == infos[-1].id


def test_time_travel_by_step_snapshot_tag_and_branch(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    infos = _saves(mgr, 3)
    mgr.tag("first", 0)
    mgr.create_branch("exp", 1)
    exp = CheckpointManager(zarr.storage.LocalStore(tmp_path), branch="exp")
    y = mgr.restore(1)["x"][:].copy()
    y[15] = 99
    exp.save({"x": y}, step=10, encoding=ENC)
    assert mgr.restore(1)["x"][4] == 11
    assert mgr.restore(snapshot=infos[2].id)["x"][8] == 12
    assert mgr.restore(tag="first")["x"][0] == 10 and mgr.restore(tag="first")["x"][4] == 1
    assert mgr.restore(branch="exp")["x"][15] == 99
    assert mgr.steps() == [0, 1, 2] and exp.steps() == [1, 10]
    assert mgr.restore()["x"][15] == 1  # main did not move
    assert mgr.branches() == ["exp", "main"]
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore(tag="nope")
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore(10)  # step 10 is on exp, not main


def test_tags_never_move_and_keep_their_snapshot_through_retention(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=1)
    _saves(mgr, 1)
    tagged = mgr.tag("release", 0)
    with pytest.raises(CheckpointExistsError, match="never move"):
        mgr.tag("release", 0)
    _saves(mgr, 3, start=1)
    assert mgr.tags() == {"release": 0}
    assert mgr.steps() == [0, 3]  # retention kept the newest, and the tagged step
    assert mgr.snapshot(tag="release").id == tagged
    CheckpointManager(store).verify_report()
    assert mgr.restore(tag="release")["x"][0] == 10
    for bad in ("", "../x", "a/b", "-x", "x" * 200):
        with pytest.raises(ValueError, match="names are"):
            mgr.tag(bad)


def test_diff_names_changed_keys_and_new_bytes(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    infos = _saves(mgr, 3)
    d = mgr.diff(0, 2)
    assert d.changed == ["x/c/1", "x/c/2"] and d.nodes == ["x"]
    assert d.new_bytes == infos[1].written_bytes + infos[2].written_bytes
    assert mgr.diff(infos[0].id, infos[1].id).changed == ["x/c/1"]


def _schema_1_store(tmp_path):
    """A store written by the previous release: objects/ and manifests/<step>.json only."""
    store = zarr.storage.LocalStore(tmp_path)
    proto = default_buffer_prototype()
    old = zarr.storage.MemoryStore()
    for step in (3, 5):
        arr = zarr.create_array(old, name="x", shape=(8,), chunks=(4,), dtype="i4", overwrite=True)
        arr[:] = np.arange(8) + step
        entries = {}
        for key, buf in sync(_items(old)):
            if key.endswith("zarr.json"):
                entries[key] = buf.to_bytes().decode()
            else:
                digest = content_hash(buf.to_bytes())
                sync(store.set(object_key(digest), buf))
                entries[key] = (digest, len(buf))
        body = Manifest(step, entries, {"step": step}, 3 if step == 5 else None, 1.0).to_bytes()
        sync(store.set(manifest_key(step), proto.buffer.from_bytes(body)))
    return store


async def _items(store):
    return [(k, await store.get(k, default_buffer_prototype())) async for k in store.list()]


def test_schema_1_checkpoints_stay_readable_and_new_saves_build_on_them(tmp_path):
    store = _schema_1_store(tmp_path)
    mgr = CheckpointManager(store)
    assert mgr.steps() == [3, 5] and mgr.latest().step == 5
    assert mgr.restore(3)["x"][:].tolist() == list(range(3, 11))
    assert mgr.verify_report().ok
    x = (np.arange(8) + 5).astype("i4")
    x[0] = -1
    info = mgr.save({"x": x}, encoding=ENC)
    assert info.step == 6 and info.written_objects == 1  # the other chunk is reused
    assert mgr.steps() == [3, 5, 6]
    assert mgr.restore(5)["x"][0] == 5 and mgr.restore()["x"][0] == -1
    report = CheckpointManager(store, keep_last=1).collect_garbage()
    assert report.deleted_manifests == [3, 5] and mgr.steps() == [6]
    assert mgr.restore()["x"][:].tolist() == x.tolist()
