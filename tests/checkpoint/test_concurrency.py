"""Two writers on one branch (issue 18): one wins, the other gets a clear conflict or
rebases when their chunk sets are disjoint; a lost response is neither a spurious
conflict nor a double commit; writes from many Dask tasks commit once."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.core.sync import sync

from swarmstore.checkpoint import CheckpointManager, put_if_absent
from swarmstore.checkpoint._snapshot import branch_prefix
from swarmstore.errors import CheckpointConflictError, CheckpointExistsError

ENC = {"x": {"chunks": (4, 4)}}


def _start(store):
    mgr = CheckpointManager(store)
    mgr.save({"x": np.zeros((8, 8))}, encoding=ENC)
    return mgr


def _write(session, region, value):
    zarr.open_array(session.store, path="x", mode="r+")[region] = value


def _versions(store, branch="main"):
    async def go():
        return [k async for k in store.list_prefix(branch_prefix(branch))]

    return sync(go())


def test_overlapping_writers_one_wins_the_other_gets_a_clear_conflict(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = _start(store)
    a, b = mgr.session(), mgr.session()
    _write(a, np.s_[:4, :4], 1)
    _write(b, np.s_[2:6, 2:6], 2)  # overlaps a's chunk (0, 0)
    a.commit()
    with pytest.raises(CheckpointConflictError, match=r"both changed \['x/c/0/0'") as info:
        b.commit()
    assert isinstance(info.value, CheckpointExistsError) and not info.value.disjoint
    assert mgr.steps() == [0, 1]
    assert mgr.restore()["x"][3, 3] == 1  # a's write, untouched by b


def test_disjoint_writers_both_land_by_rebase(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = _start(store)
    a, b = mgr.session(), mgr.session()
    _write(a, np.s_[:4, :4], 1)
    _write(b, np.s_[4:, 4:], 2)
    a.commit(metadata={"by": "a"})
    snap = b.commit(metadata={"by": "b"})  # the branch moved: rebased onto a's commit
    x = mgr.restore()["x"][:]
    assert x[:4, :4].min() == 1 and x[4:, 4:].min() == 2 and x.sum() == 16 + 32
    assert [c.metadata["by"] for c in mgr.log()[:2]] == ["b", "a"]
    assert snap.parent == mgr.log()[1].id and len(_versions(store)) == 3


def test_a_writer_that_asks_not_to_rebase_can_rebase_by_hand(tmp_path):
    mgr = _start(zarr.storage.LocalStore(tmp_path))
    a, b = mgr.session(), mgr.session()
    _write(a, np.s_[:4, :4], 1)
    _write(b, np.s_[4:, :4], 3)
    a.commit()
    with pytest.raises(CheckpointConflictError, match="disjoint") as info:
        b.commit(rebase=False)
    assert info.value.disjoint
    b.rebase()
    assert zarr.open_array(b.store, path="x", mode="r")[0, 0] == 1  # it sees a's write now
    b.commit()
    assert mgr.restore()["x"][:].sum() == 16 + 48


def test_the_same_step_from_two_writers_is_refused(tmp_path):
    mgr = _start(zarr.storage.LocalStore(tmp_path))
    a, b = mgr.session(), mgr.session()
    _write(a, np.s_[:4, :4], 1)
    _write(b, np.s_[4:, 4:], 2)
    a.commit(step=7)
    with pytest.raises(CheckpointConflictError, match="step 7"):
        b.commit(step=7)
    assert mgr.steps() == [0, 7]


class LostResponse(zarr.storage.WrapperStore):
    """Performs the conditional create, then reports a dropped connection (``times`` times)."""

    def __init__(self, store, times=1, prefix="refs/"):
        super().__init__(store)
        self.times, self.prefix = times, prefix

    async def set_if_not_exists(self, key, value):
        await self._store.set_if_not_exists(key, value)
        if key.startswith(self.prefix) and self.times > 0:
            self.times -= 1
            raise ConnectionResetError("connection reset by peer (the response was lost)")


def test_a_lost_commit_response_is_neither_a_conflict_nor_a_double_commit(tmp_path):
    base = zarr.storage.LocalStore(tmp_path)
    mgr = _start(base)
    lossy = CheckpointManager(LostResponse(base))
    info = lossy.save({"x": np.ones((8, 8))}, encoding=ENC)
    assert info.step == 1 and mgr.steps() == [0, 1]
    assert len(_versions(base)) == 2  # one version per commit, no second one
    assert mgr.restore()["x"][:].sum() == 64


async def test_put_if_absent_reads_back_after_a_lost_response(tmp_path):
    store = LostResponse(zarr.storage.LocalStore(tmp_path), times=1, prefix="")
    assert await put_if_absent(store, "refs/k", b"mine, write id 1")
    assert not await put_if_absent(store, "refs/k", b"theirs, write id 2")  # a real conflict
    # the response lost again on every retry: the read-back still finds the write
    again = LostResponse(zarr.storage.LocalStore(tmp_path / "again"), times=5, prefix="")
    assert await put_if_absent(again, "refs/k", b"x")
    with pytest.raises(ConnectionResetError):  # nothing ever landed: the error propagates
        await put_if_absent(NeverLands(zarr.storage.LocalStore(tmp_path / "gone")), "k", b"x")


class NeverLands(zarr.storage.WrapperStore):
    async def set_if_not_exists(self, key, value):
        raise ConnectionResetError("connection refused")


def test_a_lost_response_over_s3_is_read_back(s3_store, monkeypatch):
    """s3fs's conditional PutObject lands, then the connection drops before the answer."""
    from aiohttp import ClientConnectionError

    mgr = _start(s3_store)
    fs = s3_store.fs
    real = fs._pipe_file
    lost = {"n": 0}

    async def pipe_then_drop(path, data, **kwargs):
        await real(path, data, **kwargs)
        if "/refs/" in path and not lost["n"]:
            lost["n"] += 1
            raise ClientConnectionError("Connection lost")

    monkeypatch.setattr(fs, "_pipe_file", pipe_then_drop)
    info = mgr.save({"x": np.ones((8, 8))}, encoding=ENC)
    assert lost["n"] == 1 and info.step == 1 and len(_versions(s3_store)) == 2
    assert CheckpointManager(s3_store).restore()["x"][:].sum() == 64


def test_a_lost_response_over_obstore_is_read_back(obstore_at, monkeypatch):
    """obstore's create (``PutMode.Create``) lands, then the connection drops before the
    answer: the read-back finds this write's id, so it is neither a conflict nor retried."""
    import obstore

    from swarmstore.checkpoint import commit_guarantee

    store = obstore_at("lossy")
    assert commit_guarantee(store) == "atomic"
    mgr = _start(store)
    real = obstore.put_async
    lost = {"n": 0, "creates": 0}

    async def put_then_drop(target, path, data, **kwargs):
        result = await real(target, path, data, **kwargs)
        if kwargs.get("mode") == "create":
            lost["creates"] += 1
            if path.startswith("refs/") and not lost["n"]:
                lost["n"] += 1
                raise ConnectionResetError("connection reset by peer (the response was lost)")
        return result

    monkeypatch.setattr(obstore, "put_async", put_then_drop)
    info = mgr.save({"x": np.ones((8, 8))}, encoding=ENC)
    assert lost["n"] == 1 and info.step == 1 and len(_versions(store)) == 2
    assert lost["creates"] == 1  # read back, not created again
    monkeypatch.undo()
    assert CheckpointManager(store).restore()["x"][:].sum() == 64


def test_many_dask_tasks_write_forks_and_the_session_commits_once(tmp_path):
    import dask

    store = zarr.storage.LocalStore(tmp_path)
    mgr = _start(store)
    session = mgr.session()
    forks = [session.fork() for _ in range(4)]

    def write(fork, i):  # each task writes its own chunk (a quadrant)
        r, c = divmod(i, 2)
        zarr.open_array(fork, path="x", mode="r+")[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = i + 1
        return fork.changes

    changes = dask.compute(*(dask.delayed(write)(f, i) for i, f in enumerate(forks)))
    session.merge(*changes)
    session.commit()
    x = mgr.restore()["x"][:]
    assert [int(x[r, c]) for r in (0, 4) for c in (0, 4)] == [1, 2, 3, 4]
    assert len(_versions(store)) == 2 and mgr.steps() == [0, 1]
