"""kill -9 a writer at random moments: the last committed checkpoint always survives intact.

Each trial forks a writer (from a forkserver with everything imported) that saves
checkpoints back to back with retention on, SIGKILLs it after a random delay, and checks
the store: every listed manifest validates, the newest restores to exactly the bytes
saved, and no committed step is ever lost.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import time

import numpy as np
import pytest
import zarr
from zarr.core.sync import sync

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._manifest import INFLIGHT, object_key
from swarmstore.errors import CheckpointNotFoundError

sys.path.insert(0, os.path.dirname(__file__))
import crash_writer


@pytest.fixture(scope="module")
def forkserver():
    """A forkserver context whose server has crash_writer (and its imports) preloaded.

    The forkserver ignores the parent's sys.path (Python 3.12), so it is started here
    with PYTHONPATH naming this directory.
    """
    from multiprocessing import forkserver as fs

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["crash_writer"])
    here = os.path.dirname(__file__)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, old) if p)
    try:
        fs.ensure_running()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return ctx


def _keys(store, prefix):
    async def go():
        return [k async for k in store.list_prefix(prefix)]

    return sync(go())


def _trials(ctx, spec, store, trials, window, rng):
    checker = CheckpointManager(store, verify=True)
    newest, restored_step = -1, None
    mid_save = 0
    for trial in range(trials):
        markers = set(_keys(store, INFLIGHT))
        ready = ctx.Event()
        proc = ctx.Process(target=crash_writer.run, args=(spec, ready), daemon=True)
        proc.start()
        assert ready.wait(30), "the writer did not start"
        time.sleep(rng.uniform(*window))  # a random moment of the write loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL, "the writer died before the kill"
        mid_save += bool(set(_keys(store, INFLIGHT)) - markers)  # killed inside a save
        steps = checker.steps()
        if not steps:
            continue
        for step in steps:
            try:
                checker.manifest(step)  # every visible manifest is complete and valid
            except CheckpointNotFoundError:
                # a retention delete the dead writer sent is still landing (S3 requests
                # outlive their client); retention never drops the newest step
                assert step != steps[-1]
        assert steps[-1] >= newest, "a committed checkpoint was lost"
        newest = steps[-1]
        # every object the newest checkpoint names is still there (what a stray delete
        # of a killed collection would break) ...
        objects = set(_keys(store, "objects/"))
        assert {object_key(h) for h in checker.manifest(newest).hashes()} <= objects
        if newest != restored_step and trial % 4 == 0:  # ... and restores to the bytes saved
            restored = checker.restore(newest)["x"][:]
            np.testing.assert_array_equal(restored, crash_writer.expected(newest))
            restored_step = newest
    return newest, mid_save


def _final_check(store):
    mgr = CheckpointManager(store, keep_last=2, lease=0)
    report = mgr.collect_garbage()
    assert not report.deferred, report
    named = {object_key(h) for s in mgr.steps() for h in mgr.manifest(s).hashes()}
    assert set(_keys(store, "objects/")) == named  # no orphan survives a clean collection
    for step in mgr.steps():
        mgr.verify_step(step)
        np.testing.assert_array_equal(mgr.restore(step)["x"][:], crash_writer.expected(step))


@pytest.mark.slow
def test_kill_9_local_directory(forkserver, tmp_path):
    rng = random.Random(1234)
    spec = {"kind": "local", "path": str(tmp_path / "ckpt"), "lease": 1.0}
    store = zarr.storage.LocalStore(spec["path"])
    newest, mid_save = _trials(forkserver, spec, store, 60, (0.0, 0.15), rng)
    assert newest >= 30 and mid_save >= 6, (newest, mid_save)
    _final_check(store)


@pytest.mark.slow
def test_kill_9_s3(forkserver, s3_endpoint, s3_bucket):
    rng = random.Random(5678)
    spec = {"kind": "s3", "path": f"{s3_bucket}/ckpt", "lease": 2.0,
            "options": s3_endpoint.storage_options()}
    store = crash_writer.open_store(spec)
    newest, mid_save = _trials(forkserver, spec, store, 50, (0.0, 0.3), rng)
    assert newest >= 10 and mid_save >= 5, (newest, mid_save)
    _final_check(store)
