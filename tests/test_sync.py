"""swarmstore._sync: a store's coroutines run on zarr's I/O loop, whoever asks and from where."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore

from swarmstore import _sync


async def _where() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_run_from_plain_code_a_thread_and_inside_a_running_loop():
    assert _sync.run(_where()) is _sync.io_loop()
    got = []
    t = threading.Thread(target=lambda: got.append(_sync.run(_where())))
    t.start()
    t.join(60)
    assert got == [_sync.io_loop()]

    async def notebook_cell() -> asyncio.AbstractEventLoop:
        return _sync.run(_where())  # a sync call made inside a running loop (a notebook)

    assert asyncio.run(notebook_cell()) is _sync.io_loop()


def test_hop_from_any_loop_and_inline_on_the_io_loop():
    assert asyncio.run(_sync.hop(_where())) is _sync.io_loop()

    async def nested() -> asyncio.AbstractEventLoop:
        return await _sync.hop(_where())  # already on the I/O loop: awaited inline

    assert _sync.run(nested()) is _sync.io_loop()


def test_run_on_the_io_loop_is_refused_not_a_deadlock():
    async def inner() -> None:
        _sync.run(_where())

    with pytest.raises(RuntimeError, match="await the coroutine"):
        _sync.run(inner())


def test_an_s3_session_opened_by_zarrs_sync_api_is_usable_from_asyncio_run(s3_endpoint):
    """The README's failure: zarr's sync API opened the session on its loop, then
    ``asyncio.run`` awaited the store: "Future attached to a different loop"."""
    bucket = s3_endpoint.make_bucket()
    store = FsspecStore(s3_endpoint.filesystem(asynchronous=True), path=f"{bucket}/a")
    zarr.create_array(store, shape=(4,), chunks=(2,), dtype="i4")[:] = np.arange(4)

    async def read() -> bytes:
        buf = await store.get("zarr.json", default_buffer_prototype())
        return buf.to_bytes()

    assert b'"shape"' in asyncio.run(_sync.hop(read()))
    assert b'"shape"' in _sync.run(read())
    _sync.run(store.fs._s3.close())


def _waits_forever(started: threading.Event, unwound: threading.Event):
    """A coroutine function that says it started, waits for good, and says it unwound."""

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    return work


def test_ctrl_c_cancels_the_coroutine_and_lets_it_unwind():
    started, unwound = threading.Event(), threading.Event()
    work = _waits_forever(started, unwound)

    def interrupt() -> None:
        started.wait(60)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: it interrupts the wait

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _sync.run(work(), grace=30)
    assert unwound.is_set()


@pytest.mark.parametrize("loop_first", [True, False], ids=["task-started", "not-yet"])
def test_ctrl_c_inside_the_scheduling_call_still_unwinds_the_coroutine(monkeypatch, loop_first):
    """CI's failure: the Ctrl-C landed after the coroutine was scheduled but before ``run``
    held anything to cancel, so the coroutine ran on, never unwound. Whether the loop
    started it before the Ctrl-C (it unwinds) or not (it never runs), nothing runs on."""
    started, unwound = threading.Event(), threading.Event()
    work = _waits_forever(started, unwound)
    loop, gate = _sync.io_loop(), threading.Event()

    class Interrupted:
        def call_soon_threadsafe(self, *args: object) -> None:
            if not loop_first:  # hold the loop until the Ctrl-C was handled
                loop.call_soon_threadsafe(gate.wait, 30)
            loop.call_soon_threadsafe(*args)
            if loop_first:
                ran = threading.Event()
                loop.call_soon_threadsafe(ran.set)
                ran.wait(30)
            raise KeyboardInterrupt

    monkeypatch.setattr(_sync, "io_loop", lambda: Interrupted())
    monkeypatch.setattr(_sync, "on_io_loop", lambda: False)
    with pytest.raises(KeyboardInterrupt):
        _sync.run(work(), grace=1)
    gate.set()  # the Ctrl-C is handled: the held loop goes on to the scheduled start
    monkeypatch.undo()
    for _ in range(3):  # let the loop run what was queued, and what that queued
        _sync.run(asyncio.sleep(0))
    if loop_first:
        assert started.is_set() and unwound.wait(30)
    else:
        assert not started.is_set() and not unwound.is_set()


def test_timeout_cancels():
    unwound = threading.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    with pytest.raises(TimeoutError):
        _sync.run(work(), timeout=0.2, grace=30)
    assert unwound.is_set()
