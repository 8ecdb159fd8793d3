"""CheckpointManager over memory, local, S3 (moto) and replicated stores."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmstore.checkpoint import CheckpointManager, ManifestStore, commit_guarantee
from swarmstore.checkpoint._manifest import object_key
from swarmstore.errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ChecksumMismatch,
    ManifestError,
)

ENC = {"x": {"chunks": (16, 16)}}


def _data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.random((32, 48)),
        "y": da.from_array(np.arange(300, dtype="i4").reshape(30, 10), chunks=(10, 5)),
        "group": {"z": np.arange(5, dtype="u1")},
    }


async def _objects(store) -> list[str]:
    return [k async for k in store.list_prefix("objects/")]


def _objects_sync(store) -> list[str]:
    from zarr.core.sync import sync

    return sync(_objects(store))


def test_save_and_restore_round_trip(any_store):
    mgr = CheckpointManager(any_store)
    data = _data()
    info = mgr.save(data, metadata={"loss": 0.5}, encoding=ENC)
    assert info.step == 0 and info.parent is None and info.metadata == {"loss": 0.5}
    g = mgr.restore()
    assert isinstance(g, zarr.Group) and g.read_only
    np.testing.assert_array_equal(g["x"][:], data["x"])
    np.testing.assert_array_equal(g["y"][:], data["y"].compute())
    np.testing.assert_array_equal(g["group/z"][:], data["group"]["z"])
    assert g["x"].chunks == (16, 16)
    assert g["y"].chunks == (10, 5)  # the dask chunking became the zarr chunking
    assert mgr.verify_step(0) == info.nkeys - 5  # every object hash checks (5 metadata docs)


def test_second_save_writes_only_changed_chunks(any_store):
    mgr = CheckpointManager(any_store)
    data = _data()
    first = mgr.save(data, encoding=ENC)
    before = data["x"].copy()
    data["x"][20, 20] += 1  # one chunk of x changes
    second = mgr.save(data, encoding=ENC)
    assert second.step == 1 and second.parent == 0
    assert second.written_objects == 1
    assert second.written_bytes < first.written_bytes / 5
    d = mgr.diff(0, 1)
    assert d.changed == ["x/c/1/1"] and not d.added and not d.removed
    assert d.nodes == ["x"] and d.new_bytes == second.written_bytes
    np.testing.assert_array_equal(mgr.restore(0)["x"][:], before)
    np.testing.assert_array_equal(mgr.restore(1)["x"][:], data["x"])


def test_list_latest_steps_and_metadata():
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    assert mgr.latest() is None and mgr.list() == [] and mgr.steps() == []
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore()
    for step in (3, 5, 9):
        mgr.save({"a": np.full(4, step)}, step=step, metadata={"step": step, "tag": "run"})
    assert mgr.steps() == [3, 5, 9]
    assert [c.metadata["step"] for c in mgr.list()] == [3, 5, 9]
    assert mgr.latest().step == 9
    assert int(mgr.restore(5)["a"][0]) == 5
    assert mgr.save({"a": np.zeros(4)}).step == 10  # next after the newest
    with pytest.raises(CheckpointNotFoundError):
        mgr.restore(4)
    with pytest.raises(ValueError, match="non-negative"):
        mgr.save({"a": np.zeros(4)}, step=-2)
    with pytest.raises(ManifestError, match="plain JSON"):
        mgr.save({"a": np.zeros(4)}, metadata={"bad": {1, 2}})


def test_saving_a_committed_step_again_is_refused(plain_store):
    mgr = CheckpointManager(plain_store)
    mgr.save({"a": np.arange(3)}, step=1)
    with pytest.raises(CheckpointExistsError):
        mgr.save({"a": np.arange(4)}, step=1)
    assert mgr.restore(1)["a"].shape == (3,)


def test_two_writers_racing_for_one_step_exactly_one_commits(racing_store):
    import asyncio

    from zarr.core.sync import sync

    from swarmstore.checkpoint import put_if_absent

    store = racing_store
    # the checkpoint takes a store's word: ReplicatedStore announces supports_atomic_create
    announced = getattr(store, "supports_atomic_create", None)
    assert (
        commit_guarantee(store) in ("atomic", "atomic-in-process")
        or announced is False
        or (announced is None and type(store).__name__ == "ReplicatedStore")
    )

    async def race():
        bodies = [f"writer {i}".encode() for i in range(8)]
        won = await asyncio.gather(*(put_if_absent(store, "manifests/x.json", b) for b in bodies))
        held = await store.get("manifests/x.json", zarr.core.buffer.default_buffer_prototype())
        return won, bodies, held.to_bytes()

    won, bodies, held = sync(race())
    assert sum(won) == 1
    assert held == bodies[won.index(True)]
    # and through the manager: several threads save step 0 at once, one wins
    barrier = threading.Barrier(4)
    outcomes: list = []

    def save(i):
        mgr = CheckpointManager(store)
        barrier.wait()
        try:
            outcomes.append(mgr.save({"who": np.full(2, i)}, step=0).id)
        except CheckpointExistsError:
            outcomes.append(None)
        except Exception as e:  # anything else is a failure, reported as itself
            outcomes.append(e)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not [t for t in threads if t.is_alive()], "a saving thread is still running"
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    winners = [o for o in outcomes if o]
    assert len(outcomes) == 4 and len(winners) == 1
    assert CheckpointManager(store).latest().id == winners[0]


def test_commit_guarantee_per_store_type(tmp_path, s3_store):
    from swarmstore.storage import ReplicatedStore

    assert commit_guarantee(zarr.storage.LocalStore(tmp_path)) == "atomic"
    assert commit_guarantee(s3_store) == "atomic"
    assert commit_guarantee(zarr.storage.MemoryStore()) == "atomic-in-process"
    rs = ReplicatedStore(
        [f"file://{tmp_path}/n{i}" for i in range(2)], replicas=2, state_dir=str(tmp_path / "s")
    )
    # a quorum of atomic conditional creates, as the store announces
    flag = getattr(rs, "supports_atomic_create", False)
    assert commit_guarantee(rs) == ("atomic" if flag else "store-defined")


def test_save_a_zarr_group_copies_its_encoded_bytes(tmp_path):
    src = zarr.open_group(zarr.storage.LocalStore(tmp_path / "src"), mode="w")
    src.attrs["title"] = "source"
    a = src.create_array("a", shape=(40,), chunks=(10,), dtype="f4", compressors=None)
    a[:] = np.linspace(0, 1, 40)
    src.create_group("sub").create_array("b", shape=(2, 2), dtype="i8")[:] = [[1, 2], [3, 4]]
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    mgr.save(src)
    g = mgr.restore()
    assert g.attrs["title"] == "source"
    assert g["a"].compressors == ()
    np.testing.assert_array_equal(g["a"][:], a[:])
    np.testing.assert_array_equal(g["sub/b"][:], [[1, 2], [3, 4]])
    # the stored chunk is byte-for-byte the source's, under its xxh3-128
    entry = mgr.manifest(0).entries["a/c/1"]
    assert entry[1] == 40  # 10 float32, uncompressed
    mgr.save({"copy": src["a"], "n": np.ones(2)})
    assert mgr.manifest(1).entries["copy/c/1"] == entry


def test_a_bare_array_restores_as_an_array():
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    mgr.save(np.arange(10), encoding={"": {"chunks": (5,)}})
    arr = mgr.restore()
    assert isinstance(arr, zarr.Array) and arr[:].tolist() == list(range(10))


def test_restore_is_lazy_and_readable_by_dask_and_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset(
        {"t": (("time", "x"), np.arange(20.0).reshape(4, 5))},
        coords={"x": np.arange(5)},
        attrs={"source": "test"},
    )
    src = zarr.storage.LocalStore(tmp_path / "src")
    ds.to_zarr(src, zarr_format=3, consolidated=False)
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    mgr.save(zarr.open_group(src, mode="r"))
    store = mgr.open_store()
    assert isinstance(store, ManifestStore) and store.read_only
    back = xr.open_zarr(store, consolidated=False)
    xr.testing.assert_identical(back.load(), ds)
    lazy = da.from_zarr(mgr.restore()["t"])
    assert float(lazy.sum().compute()) == float(np.arange(20.0).sum())


def test_restore_refuses_corrupt_chunks(tmp_path):
    backing = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(backing)
    mgr.save({"x": np.arange(100.0)}, encoding={"x": {"chunks": (10,)}})
    digest = mgr.manifest(0).entries["x/c/3"][0]
    path = tmp_path / object_key(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    g = mgr.restore()
    np.testing.assert_array_equal(g["x"][:30], np.arange(30.0))  # other chunks read fine
    with pytest.raises(ChecksumMismatch):
        g["x"][30:40]
    with pytest.raises(ChecksumMismatch, match="1 of"):
        mgr.verify_step(0)
    path.unlink()
    with pytest.raises(CheckpointNotFoundError, match="missing"):
        g["x"][30:40]


def test_tampered_manifest_is_refused_and_latest_falls_back(tmp_path):
    backing = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(backing)
    mgr.save({"a": np.arange(3)}, metadata={"loss": 1.0})
    mgr.save({"a": np.arange(3) + 1}, metadata={"loss": 0.5})
    path = tmp_path / "snapshots" / f"{mgr.latest().id}.json"
    path.write_bytes(path.read_bytes().replace(b'"loss":0.5', b'"loss":0.1'))
    mgr = CheckpointManager(backing)  # a fresh reader (a manager caches what it verified)
    with pytest.raises(ManifestError, match="fails its checksum"):
        mgr.restore(1)
    assert mgr.latest().step == 0
    assert [c.step for c in mgr.list()] == [0]
    assert mgr.restore()["a"][:].tolist() == [0, 1, 2]
    assert mgr.save({"a": np.zeros(3)}).step == 2  # a full save goes on over a damaged tip


def test_save_async_returns_a_future_and_snapshots_numpy(tmp_path):
    with CheckpointManager(zarr.storage.LocalStore(tmp_path)) as mgr:
        x = np.zeros(8)
        futures = []
        for step in range(3):
            x[:] = step
            futures.append(mgr.save_async({"x": x}, metadata={"step": step}))
        x[:] = 99  # the loop goes on mutating; saves hold their own copies
        infos = [f.result(timeout=30) for f in futures]
    assert [i.step for i in infos] == [0, 1, 2]
    for step in range(3):
        assert mgr.restore(step)["x"][:].tolist() == [step] * 8


def test_save_async_error_surfaces_on_the_future():
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    mgr.save({"a": np.arange(2)}, step=0)
    fut = mgr.save_async({"a": np.arange(2)}, step=0)
    with pytest.raises(CheckpointExistsError):
        fut.result(timeout=30)
    bad = mgr.save_async({"a": np.arange(2)}, metadata={"x": object()})
    with pytest.raises(ManifestError):
        bad.result(timeout=30)
    assert mgr.save_async({"a": np.arange(2)}).result(timeout=30).step == 1
    mgr.close()


def test_archive_copies_and_verifies(tmp_path, s3_store):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    data = _data()
    mgr.save(data, encoding=ENC)
    data["x"][0, 0] = -1
    mgr.save(data, encoding=ENC)
    first = mgr.archive(0, to=s3_store)
    assert first.copied_objects > 0 and first.skipped_objects == 0
    second = mgr.archive(1, to=s3_store)
    assert second.copied_objects == 1  # only the changed chunk travels
    assert mgr.archive(1, to=s3_store).copied_objects == 0  # idempotent
    cold = CheckpointManager(s3_store)
    assert cold.steps() == [0, 1]
    np.testing.assert_array_equal(cold.restore(1)["x"][:], data["x"])
    cold.verify_step(0)


def test_archive_refuses_a_corrupt_source(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "hot"))
    mgr.save({"x": np.arange(50.0)}, encoding={"x": {"chunks": (10,)}})
    digest = mgr.manifest(0).entries["x/c/2"][0]
    path = tmp_path / "hot" / object_key(digest)
    path.write_bytes(b"garbage")
    cold = zarr.storage.LocalStore(tmp_path / "cold")
    with pytest.raises(ChecksumMismatch):
        mgr.archive(0, to=cold)
    assert CheckpointManager(cold).steps() == []  # nothing visible was committed


def test_concurrent_saves_from_two_managers_never_collide(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    results: list = []

    def run(seed):
        mgr = CheckpointManager(store)
        for _ in range(5):
            while True:
                try:
                    results.append(mgr.save({"v": np.full(4, seed)}, metadata={"by": seed}))
                    break
                except CheckpointExistsError:
                    continue  # the other manager took this step: take the next one

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    mgr = CheckpointManager(store)
    assert mgr.steps() == list(range(10))
    for info in mgr.list():
        assert mgr.restore(info.step)["v"][0] == info.metadata["by"]


def test_caches_are_looked_through_for_the_committed_state(tmp_path):
    """Two processes' TieredStores over one store: each sees the other's commits and GC."""
    from swarmstore.cache import DiskTier, TieredStore

    def tiered(name):
        return TieredStore(
            zarr.storage.LocalStore(tmp_path / "ckpt"),
            memory_bytes="4MiB",
            disk=DiskTier(tmp_path / name, max_bytes="8MiB"),
        )

    a = CheckpointManager(tiered("a"))
    b = CheckpointManager(tiered("b"), keep_last=1)
    assert a.latest() is None  # "no manifest" is now in a's view once
    b.save({"v": np.arange(4)})
    assert a.latest().step == 0 and a.restore()["v"][:].tolist() == [0, 1, 2, 3]
    b.save({"v": np.arange(4) + 1})  # retention drops step 0 through b's cache
    assert a.steps() == [1]
    assert a.restore()["v"][:].tolist() == [1, 2, 3, 4]
    assert commit_guarantee(tiered("c")) == "atomic"


def test_zarr_v2_arrays_are_saved_as_v3(tmp_path):
    v2 = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "v2"),
        shape=(12,),
        chunks=(4,),
        dtype="i2",
        zarr_format=2,
    )
    v2[:] = np.arange(12)
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    mgr.save({"old": v2})
    arr = mgr.restore()["old"]
    assert arr.metadata.zarr_format == 3 and arr.chunks == (4,)
    assert arr[:].tolist() == list(range(12))


@pytest.mark.parametrize("bad", [{1: np.zeros(2)}, {"a/b": np.zeros(2)}, {"..": np.zeros(2)}])
def test_bad_member_names_are_refused(bad):
    from swarmstore.errors import InvalidKeyError

    mgr = CheckpointManager(zarr.storage.MemoryStore())
    with pytest.raises(InvalidKeyError):
        mgr.save(bad)
    assert mgr.steps() == []


def test_fill_value_chunks_are_not_stored_and_read_back_as_fill():
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    x = np.zeros((8, 8))
    x[0, 0] = 1
    info = mgr.save({"x": x}, encoding={"x": {"chunks": (4, 4)}})
    assert info.written_objects == 1  # three chunks equal the fill value
    np.testing.assert_array_equal(mgr.restore()["x"][:], x)


@settings(max_examples=25, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11), st.floats(-9, 9)), max_size=6)
)
def test_incremental_saves_write_exactly_the_changed_chunks(edits):
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    x = np.arange(144, dtype="f8").reshape(12, 12)
    mgr.save({"x": x}, encoding={"x": {"chunks": (4, 4)}})
    y = x.copy()
    for i, j, v in edits:
        y[i, j] = v
    info = mgr.save({"x": y}, encoding={"x": {"chunks": (4, 4)}})
    differ = x.view("i8") != y.view("i8")  # bitwise: -0.0 is a change, as zarr stores it
    changed = {(i // 4, j // 4) for i, j in zip(*np.nonzero(differ), strict=True)}
    assert info.written_objects == len(changed)
    assert set(mgr.diff(0, 1).changed) == {f"x/c/{a}/{b}" for a, b in changed}
    np.testing.assert_array_equal(mgr.restore(1)["x"][:], y)
    np.testing.assert_array_equal(mgr.restore(0)["x"][:], x)


def test_a_path_or_url_names_the_store_and_anything_else_is_refused_at_once(tmp_path):
    """A path (the first thing a new user tries) used to be kept as a string and fail
    deep inside the first save with ``'str' object has no attribute 'delete'``."""
    mgr = CheckpointManager(str(tmp_path / "ck"))
    mgr.save({"w": np.arange(4)})
    again = CheckpointManager(f"file://{tmp_path / 'ck'}")
    assert again.restore()["w"][:].tolist() == [0, 1, 2, 3]
    assert CheckpointManager(tmp_path / "ck").steps() == [0]  # a pathlib.Path too
    for bad in (None, 3, b"path", ["a", "b"]):
        with pytest.raises(TypeError, match="a zarr Store, a path or a URL"):
            CheckpointManager(bad)
    with pytest.raises(ValueError, match="non-empty"):
        CheckpointManager("  ")
