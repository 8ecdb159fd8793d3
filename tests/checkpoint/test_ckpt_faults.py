"""Regression tests for the fault campaign's checkpoint defects (issue 11 items 14-17, 21)."""

from __future__ import annotations

import threading

import dask.config
import numpy as np
import pytest
import zarr
from distributed.utils_test import poll_for
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from swarmstore import _clock
from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._lease import read_doc
from swarmstore.checkpoint._manifest import INFLIGHT, MAX_STEP, Manifest, manifest_key, object_key
from swarmstore.errors import ConfigError, LeaseLostError, ManifestError

PROTO = default_buffer_prototype()


def _put(store, key: str, data: bytes) -> None:
    sync(store.set(key, PROTO.buffer.from_bytes(data)))


def _keys(store, prefix: str) -> list[str]:
    async def go():
        return [k async for k in store.list_prefix(prefix)]

    return sync(go())


# -- item 15: steps are non-negative ints up to 2**63 - 1, never bools ----------------------


@pytest.mark.parametrize("step", [10**20, MAX_STEP + 1, True, False, np.True_, 1.0, "3", -1])
def test_steps_outside_the_documented_range_are_refused(step):
    mgr = CheckpointManager(zarr.storage.MemoryStore())
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        mgr.save({"a": np.arange(3)}, step=step)
    assert mgr.steps() == []


def test_the_largest_step_is_visible_restorable_and_survives_retention(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=1)
    mgr.save({"a": np.arange(3)}, step=np.int64(5))
    info = mgr.save({"a": np.arange(3) + 1}, step=MAX_STEP)
    assert info.step == MAX_STEP and mgr.steps() == [MAX_STEP]
    assert mgr.latest().step == MAX_STEP
    assert mgr.restore(MAX_STEP)["a"][:].tolist() == [1, 2, 3]
    mgr.collect_garbage()
    mgr.verify_step(MAX_STEP)


def test_collection_never_deletes_manifest_names_it_does_not_know(tmp_path):
    """An unknown name under manifests/ (a 21-digit step of an older release) is left alone."""
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=1)
    mgr.save({"a": np.arange(3)})
    foreign = "manifests/100000000000000000000.json"
    _put(store, foreign, b"{}")
    mgr.save({"a": np.arange(4)})
    assert not mgr.collect_garbage().deferred
    assert sync(store.exists(foreign))


# -- item 16: one bad manifest is skipped and reported, never breaks the store -----------


def _bodies():
    good = Manifest(
        5, {"zarr.json": '{"zarr_format":3,"node_type":"group","attributes":{}}'}, created=1.0
    ).to_bytes()
    return {
        "nan": good.replace(b'"created":1.0', b'"created":NaN'),
        "infinity": good.replace(b'"created":1.0', b'"created":Infinity'),
        "overflow": good.replace(b'"created":1.0', b'"created":1e400'),
        "nested": b"[" * 100_000 + b"]" * 100_000,
        "nested-open": b'{"a":' + b"[" * 100_000,
    }


@pytest.mark.parametrize("kind", list(_bodies()))
def test_one_bad_snapshot_is_skipped_everywhere(tmp_path, kind):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=5)
    for step in (1, 3, 5):
        mgr.save({"a": np.full(3, step)}, step=step)
    (tmp_path / "snapshots" / f"{mgr.latest().id}.json").write_bytes(_bodies()[kind])
    mgr = CheckpointManager(store, keep_last=5)  # a fresh reader
    assert mgr.steps() == [1, 3, 5]  # the refs still read
    assert [c.step for c in mgr.list()] == [1, 3]
    assert mgr.latest().step == 3
    assert mgr.restore()["a"][:].tolist() == [3, 3, 3]
    with pytest.raises(ManifestError):
        mgr.restore(5)
    report = mgr.collect_garbage()
    assert report.damaged == [5] and not report.deferred
    assert mgr.save({"a": np.zeros(3)}).step == 6  # the store goes on working
    assert mgr.verify_report(5).unreadable


def test_one_bad_schema_1_manifest_is_skipped(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    for step in (1, 3):
        body = Manifest(
            step,
            {"zarr.json": '{"zarr_format":3,"node_type":"group","attributes":{}}'},
            created=1.0,
        ).to_bytes()
        _put(store, manifest_key(step), body)
    _put(store, manifest_key(5), _bodies()["nan"])
    mgr = CheckpointManager(store, keep_last=5)
    assert mgr.steps() == [1, 3] and mgr.latest().step == 3
    assert not mgr.collect_garbage().deferred
    assert sync(store.exists(manifest_key(5)))  # kept: a damaged manifest is not garbage


def test_manifest_parsing_is_strict():
    for body in _bodies().values():
        with pytest.raises(ManifestError):
            Manifest.from_bytes(body)
    with pytest.raises(ManifestError, match="plain JSON"):
        CheckpointManager(zarr.storage.MemoryStore()).save(
            {"a": np.zeros(1)}, metadata={"loss": float("inf")}
        )
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["x"] = node = {}
    with pytest.raises(ManifestError, match="nested"):
        CheckpointManager(zarr.storage.MemoryStore()).save({"a": np.zeros(1)}, metadata=deep)


def test_a_bad_marker_or_lock_document_does_not_break_collection(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=1)
    mgr.save({"a": np.arange(2)})
    _put(store, f"{INFLIGHT}x.json", b"[" * 100_000)
    _put(store, "locks/gc.json", b'{"renewed": NaN}')
    assert mgr.collect_garbage().deferred  # broke the lock, removed the marker
    assert not mgr.collect_garbage().deferred


# -- item 17: a save reuses only the parent's objects that are really there ---------------


@pytest.mark.parametrize("many", [False, True], ids=["probe", "listing"])
def test_a_lost_parent_object_is_rewritten_by_the_next_save(tmp_path, many, monkeypatch):
    from swarmstore.checkpoint import _objects

    if many:
        monkeypatch.setattr(_objects, "LIST_ABOVE", 0)  # the listing path, as for 1k+ objects
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store)
    data = {"x": np.arange(64.0)}
    mgr.save(data, encoding={"x": {"chunks": (8,)}})
    lost = mgr.manifest(0).entries["x/c/3"][0]
    (tmp_path / object_key(lost)).unlink()
    info = mgr.save(data, encoding={"x": {"chunks": (8,)}})
    assert info.written_objects == 1 and mgr.manifest(1).entries["x/c/3"][0] == lost
    mgr.verify_step(1)
    np.testing.assert_array_equal(mgr.restore(1)["x"][:], data["x"])


# -- item 14: concurrency 0 is refused, not a deadlock ------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_bad_concurrency_is_refused(value):
    with pytest.raises(ConfigError, match="concurrency"):
        CheckpointManager(zarr.storage.MemoryStore(), concurrency=value)
    with (
        dask.config.set({"swarmstore.checkpoint.concurrency": value}),
        pytest.raises(ConfigError, match="concurrency"),
    ):
        CheckpointManager(zarr.storage.MemoryStore())


@pytest.mark.parametrize(
    "kwargs", [{"lease": 0}, {"lease": "-1s"}, {"heartbeat": 0}, {"lease": 10, "heartbeat": 6}]
)
def test_bad_lease_terms_are_refused(kwargs):
    with pytest.raises(ConfigError):
        CheckpointManager(zarr.storage.MemoryStore(), **kwargs)


# -- item 21: leases are renewed, so a long save stays alive and a dead one does not -------


class FakeClock:
    """``swarmstore._clock.wall`` under the test's control (leases read nothing else)."""

    def __init__(self, monkeypatch):
        self.now = _clock.wall()
        monkeypatch.setattr(_clock, "wall", lambda: self.now)


class Gate(zarr.storage.WrapperStore):
    """Holds every object write after the first ``free`` until ``open`` is set."""

    def __init__(self, store, free: int = 2):
        super().__init__(store)
        self.open, self.arrived, self.free = threading.Event(), threading.Event(), free

    async def set(self, key, value):
        import asyncio

        if key.startswith("objects/"):
            self.free -= 1
            if self.free < 0:
                self.arrived.set()
                while not self.open.is_set():
                    await asyncio.sleep(0.005)
        await self._store.set(key, value)


def _gated_save(tmp_path, lease=30.0, heartbeat=0.05):
    base = zarr.storage.LocalStore(tmp_path)
    CheckpointManager(base).save({"x": np.arange(8.0)})
    gate = Gate(base)
    writer = CheckpointManager(gate, lease=lease, heartbeat=heartbeat)
    box: dict = {}

    def run():
        try:
            box["info"] = writer.save({"x": np.arange(32.0)}, encoding={"x": {"chunks": (4,)}})
        except Exception as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    assert gate.arrived.wait(30)
    return base, gate, thread, box


def _marker_doc(store):
    keys = _keys(store, INFLIGHT)
    return sync(read_doc(store, keys[0])) if keys else None


def test_a_save_that_outlives_its_lease_stays_alive_by_renewing(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    base, gate, thread, box = _gated_save(tmp_path)
    gc = CheckpointManager(base, keep_last=1, lease=30.0, heartbeat=0.05)
    beat = _marker_doc(base)["beat"]
    clock.now += 300  # ten leases after the save started: only renewals keep it alive
    poll_for(lambda: _marker_doc(base)["beat"] > beat + 1, timeout=30)
    report = gc.collect_garbage()
    assert report.deferred and "in flight" in report.reason
    gate.open.set()
    thread.join(30)
    assert "error" not in box
    gc.verify_step(box["info"].step)


def test_a_save_declared_dead_never_commits(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    base, gate, thread, box = _gated_save(tmp_path, heartbeat=10.0)  # no renewal in time
    gc = CheckpointManager(base, keep_last=1, lease=30.0)
    clock.now += 300
    report = gc.collect_garbage()
    assert report.deferred and "dead save marker" in report.reason
    assert not gc.collect_garbage().deferred  # swept: the dead save's objects are gone
    gate.open.set()
    thread.join(30)
    assert isinstance(box.get("error"), LeaseLostError)
    assert gc.steps() == [0]
    assert not gc.collect_garbage().deferred
