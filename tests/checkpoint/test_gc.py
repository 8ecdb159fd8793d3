"""Retention decisions (pure) and garbage collection on real stores, beside concurrent saves."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from distributed.utils_test import poll_for
from hypothesis import given
from hypothesis import strategies as st
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from swarmstore.checkpoint import CheckpointManager, KeepBest, RetentionPolicy
from swarmstore.checkpoint._manifest import GC_LOCK, INFLIGHT, object_key
from swarmstore.errors import ConfigError


def _ckpts(metrics):
    return [SimpleNamespace(step=s, metadata=m) for s, m in metrics]


# -- retention decisions ---------------------------------------------------------------


def test_no_rule_keeps_everything():
    policy = RetentionPolicy()
    assert policy.keeps_all
    assert policy.select(_ckpts([(1, {}), (2, {})])) == {1, 2}


def test_keep_last_and_every_combine():
    policy = RetentionPolicy(keep_last=3, keep_every=5)
    assert policy.select(_ckpts([(s, {}) for s in range(12)])) == {0, 5, 9, 10, 11}


def test_keep_best_min_and_max_ignore_missing_and_nan():
    cks = _ckpts(
        [
            (0, {"loss": 3.0}),
            (1, {"loss": 1.0}),
            (2, {}),
            (3, {"loss": float("nan")}),
            (4, {"loss": 2.0, "acc": 0.9}),
            (5, {"loss": 9.0, "acc": 0.1}),
        ]
    )
    assert RetentionPolicy(keep_best=KeepBest("loss", n=2)).select(cks) == {1, 4, 5}
    assert RetentionPolicy(keep_best=KeepBest("acc", mode="max")).select(cks) == {4, 5}


def test_the_newest_is_always_kept():
    policy = RetentionPolicy(keep_every=100)
    assert policy.select(_ckpts([(1, {}), (7, {})])) == {7}


@pytest.mark.parametrize(
    "kwargs",
    [{"keep_last": 0}, {"keep_every": -1}, {"keep_last": 1.5}],
)
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ConfigError):
        RetentionPolicy(**kwargs)


def test_bad_keep_best_is_refused():
    with pytest.raises(ConfigError):
        KeepBest("loss", mode="lowest")
    with pytest.raises(ConfigError):
        KeepBest("loss", n=0)


@given(
    steps=st.sets(st.integers(0, 500), min_size=1, max_size=40),
    last=st.none() | st.integers(1, 10),
    every=st.none() | st.integers(1, 50),
)
def test_retention_properties(steps, last, every):
    cks = _ckpts([(s, {"loss": (s * 7919) % 13}) for s in steps])
    kept = RetentionPolicy(keep_last=last, keep_every=every).select(cks)
    ordered = sorted(steps)
    assert kept <= steps and ordered[-1] in kept
    if last is not None:
        assert set(ordered[-last:]) <= kept
    if every is not None:
        assert {s for s in steps if s % every == 0} <= kept
    if last is None and every is None:
        assert kept == steps


def test_config_supplies_the_rules():
    import dask.config

    with dask.config.set(
        {
            "swarmstore.checkpoint.keep-last": 2,
            "swarmstore.checkpoint.keep-best": {"metric": "loss", "n": 1},
        }
    ):
        mgr = CheckpointManager(zarr.storage.MemoryStore())
    assert mgr.policy == RetentionPolicy(keep_last=2, keep_best=KeepBest("loss"))


# -- garbage collection ----------------------------------------------------------------


def _objects(store) -> set[str]:
    async def go():
        return {k async for k in store.list_prefix("objects/")}

    return sync(go())


def _named(mgr) -> set[str]:
    return {object_key(h) for c in mgr.list() for h in mgr.manifest(c.step).hashes()}


def test_retention_deletes_only_objects_no_kept_manifest_names(any_store):
    mgr = CheckpointManager(any_store, keep_last=2, keep_best="loss")
    x = np.zeros((8, 8))
    losses = [5.0, 0.1, 3.0, 4.0, 2.0]
    for step, loss in enumerate(losses):
        x[step, :] = step + 1  # one new chunk per step, the rest shared
        info = mgr.save({"x": x}, metadata={"loss": loss}, encoding={"x": {"chunks": (1, 8)}})
    assert info.gc.deleted_manifests == [2]
    assert mgr.steps() == [1, 3, 4]  # best loss, and the last two
    assert _objects(any_store) == _named(mgr)  # nothing unnamed is left, nothing named is gone
    for step in mgr.steps():
        mgr.verify_step(step)
        assert mgr.restore(step)["x"][step, 0] == step + 1


def _marker(store, started: float) -> None:
    body = json.dumps({"id": "x", "step": None, "started": started}).encode()
    sync(store.set(f"{INFLIGHT}other.json", default_buffer_prototype().buffer.from_bytes(body)))


def test_a_save_in_flight_defers_the_sweep_and_an_abandoned_one_does_not(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    for step in range(3):
        CheckpointManager(store).save({"x": np.full(4, step)})
    mgr = CheckpointManager(store, keep_last=1, lease=60)
    _marker(store, time.time())
    report = mgr.collect_garbage()
    assert report.deferred and "in flight" in report.reason
    orphaned = _objects(store) - _named(mgr)
    assert orphaned  # the dropped steps' objects wait
    _marker(store, time.time() - 3600)  # a writer that died an hour ago
    report = mgr.collect_garbage()
    assert report.deferred and "dead save marker" in report.reason  # removed, sweep next time
    report = mgr.collect_garbage()
    assert not report.deferred and report.deleted_objects == len(orphaned)
    assert _objects(store) == _named(mgr)
    assert not (tmp_path / INFLIGHT).exists() or not list((tmp_path / INFLIGHT).iterdir())


def test_one_collection_at_a_time_and_abandoned_locks_are_broken(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(store, keep_last=1, lease=60)
    mgr.save({"x": np.ones(2)})
    lock = json.dumps({"id": "someone", "started": time.time()}).encode()
    sync(store.set(GC_LOCK, default_buffer_prototype().buffer.from_bytes(lock)))
    assert "another garbage collection" in mgr.collect_garbage().reason
    stale = json.dumps({"id": "someone", "started": time.time() - 7200}).encode()
    sync(store.set(GC_LOCK, default_buffer_prototype().buffer.from_bytes(stale)))
    assert not mgr.collect_garbage().deferred
    assert not (tmp_path / GC_LOCK).exists()


class GatedStore(WrapperStore):
    """Lets ``free`` writes under ``objects/`` through, then holds the rest until ``gate``.

    A test instrument: it freezes a save after some of its objects are stored.
    """

    def __init__(self, store, gate: threading.Event, arrived: threading.Event, free: int = 3):
        super().__init__(store)
        self.gate, self.arrived, self.free = gate, arrived, free

    async def set(self, key, value):
        if key.startswith("objects/"):
            import asyncio

            self.free -= 1
            if self.free < 0:
                self.arrived.set()
                while not self.gate.is_set():
                    await asyncio.sleep(0.005)
        await self._store.set(key, value)


@pytest.mark.parametrize("dead", [False, True], ids=["alive", "declared-dead"])
def test_gc_beside_a_save_in_flight(tmp_path, monkeypatch, dead):
    """GC runs while a save has written some objects but not committed.

    While the save renews its marker, the marker defers the sweep and the save commits
    intact. Once the clock says its lease ran out (the negative control), a collection
    removes the marker, the next one sweeps the save's objects, and the save, finding
    its marker gone, refuses to commit a checkpoint that would name them.
    """
    from swarmstore import _clock
    from swarmstore.errors import LeaseLostError

    base = zarr.storage.LocalStore(tmp_path)
    mgr = CheckpointManager(base, keep_last=1, lease=60)
    mgr.save({"x": np.arange(64.0)}, encoding={"x": {"chunks": (8,)}})
    before = _objects(base)
    gate, arrived = threading.Event(), threading.Event()
    writer = CheckpointManager(GatedStore(base, gate, arrived), lease=60, concurrency=1)
    data = {"x": np.arange(64.0) * 2, "y": np.arange(64.0) * 3}
    box: dict = {}
    enc = {"x": {"chunks": (8,)}, "y": {"chunks": (8,)}}

    def save():
        try:
            box["info"] = writer.save(data, encoding=enc)
        except Exception as e:
            box["error"] = e

    t = threading.Thread(target=save)
    t.start()
    assert arrived.wait(30)
    poll_for(lambda: len(_objects(base) - before) >= 3, timeout=30)  # its first objects landed
    if dead:
        later = _clock.wall() + 3600
        monkeypatch.setattr(_clock, "wall", lambda: later)
        assert "dead save marker" in mgr.collect_garbage().reason
    report = mgr.collect_garbage()
    gate.set()
    t.join(30)
    if not dead:
        assert report.deferred
        step = box["info"].step
        mgr.verify_step(step)
        np.testing.assert_array_equal(mgr.restore(step)["y"][:], data["y"])
    else:
        assert not report.deferred and report.deleted_objects >= 3
        assert isinstance(box["error"], LeaseLostError) and mgr.steps() == [0]


def test_gc_loop_beside_a_save_loop_never_loses_a_kept_chunk(tmp_path):
    store = zarr.storage.LocalStore(tmp_path)
    stop = threading.Event()
    errors: list = []

    def saves():
        mgr = CheckpointManager(store)
        x = np.zeros((16, 16))
        step = 0
        try:
            while not stop.is_set():
                x[step % 16, :] = step
                mgr.save(
                    {"x": x},
                    step=step,
                    metadata={"row": step % 16, "v": step},
                    encoding={"x": {"chunks": (2, 16)}},
                )
                step += 1
                time.sleep(0.002 * (step % 5))  # gaps, so collections also run between saves
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=saves)
    t.start()
    gc = CheckpointManager(store, keep_last=2, lease=60)
    swept = deferred = 0
    deadline = time.monotonic() + 60
    # collect until both kinds of collection happened several times (however slow the
    # machine): sweeps between saves, and sweeps deferred by a save in flight
    while (swept < 5 or deferred < 5) and time.monotonic() < deadline and not errors:
        report = gc.collect_garbage()
        swept += not report.deferred
        deferred += report.deferred
    stop.set()
    t.join(30)
    assert not errors
    assert swept and deferred, (swept, deferred)
    report = gc.collect_garbage()
    assert not report.deferred
    for info in gc.list():
        gc.verify_step(info.step)
        assert gc.restore(info.step)["x"][info.metadata["row"], 0] == info.metadata["v"]
    assert _objects(store) == _named(gc)


def test_collections_beside_sessions_on_two_branches_lose_nothing_kept(tmp_path):
    """Sessions commit on main and on a branch while another manager collects in a loop."""
    store = zarr.storage.LocalStore(tmp_path)
    base = CheckpointManager(store)
    base.save({"x": np.zeros((8, 8))}, encoding={"x": {"chunks": (2, 8)}})
    base.create_branch("exp", 0)
    errors: list = []

    def writes(branch, sign):
        mgr = CheckpointManager(store, branch=branch)
        try:
            for i in range(12):
                with mgr.session() as s:
                    zarr.open_array(s.store, path="x", mode="r+")[i % 4 * 2, :] = sign * (i + 1)
                    s.commit(metadata={"row": i % 4 * 2, "v": sign * (i + 1)})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writes, args=a) for a in (("main", 1), ("exp", -1))]
    for t in threads:
        t.start()
    gc = CheckpointManager(store, keep_last=2, lease=60)
    while any(t.is_alive() for t in threads):
        gc.collect_garbage()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not gc.collect_garbage().deferred
    for branch in ("main", "exp"):
        mgr = CheckpointManager(store, branch=branch)
        assert len(mgr.steps()) >= 2
        for info in mgr.list():
            mgr.verify_step(info.step)
            assert mgr.restore(info.step)["x"][info.metadata["row"], 0] == info.metadata["v"]
    assert CheckpointManager(store).verify_report().ok
