"""Run a coroutine on the event loop that swarmstore's I/O lives on, from any context.

zarr's synchronous API (``arr[:] = x``) runs store coroutines on zarr's own I/O loop, in
its ``zarr_io`` thread, and an S3 node's HTTP session belongs to the loop that opened it.
A maintenance coroutine awaited on another loop (a notebook's, ``asyncio.run``'s) would
then touch that session from the wrong loop ("Future attached to a different loop"). So
the store's coroutines run on the I/O loop, whoever asks:

- :func:`run` blocks until done: from plain scripts, from threads, and from code that runs
  inside a running loop without awaiting (a notebook cell calling a sync method);
- :func:`hop` is awaitable from any running loop (a notebook's, ``asyncio.run``'s), and runs
  the coroutine inline when already on the I/O loop.

Ctrl-C while :func:`run` waits cancels the coroutine and lets it unwind (``finally`` blocks,
closing sessions) for up to ``grace`` seconds before ``KeyboardInterrupt`` propagates.

Imports only asyncio and zarr's sync module; every room may import it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["hop", "io_loop", "on_io_loop", "run"]


def io_loop() -> asyncio.AbstractEventLoop:
    """zarr's I/O loop (started on first use), where zarr's sync API runs store coroutines."""
    from zarr.core.sync import _get_loop

    return _get_loop()


def on_io_loop() -> bool:
    """Whether the caller runs on the I/O loop's thread."""
    loop = io_loop()
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def run[T](coro: Coroutine[Any, Any, T], *, timeout: float | None = None, grace: float = 2.0) -> T:
    """Run ``coro`` on the I/O loop and block until it finishes; returns its result.

    Raises ``RuntimeError`` when called on the I/O loop itself (that would deadlock: await
    the coroutine there instead), ``TimeoutError`` after ``timeout`` seconds (the coroutine
    is cancelled).
    """
    if on_io_loop():
        coro.close()
        raise RuntimeError("swarmstore._sync.run called on the I/O loop: await the coroutine")
    finished = threading.Event()

    async def tracked() -> T:
        try:
            return await coro
        finally:
            finished.set()

    # The future exists before anything is scheduled, so a Ctrl-C that lands anywhere
    # below (even inside the scheduling call) still finds something to cancel.
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        io_loop().call_soon_threadsafe(_start, tracked(), future, finished, coro)
        return _wait(future, timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        finished.wait(grace)
        raise TimeoutError(f"did not finish within {timeout} s") from None
    except (KeyboardInterrupt, SystemExit):
        future.cancel()  # the task unwinds on the I/O loop: finally blocks, session closes
        finished.wait(grace)
        raise


#: how often a waiting thread wakes to let Python run its signal handlers: a Ctrl-C goes to
#: any thread of the process, and a wait without a timeout is not interrupted by a signal
#: another thread took, so a plain ``future.result()`` could sleep through it for good
_WAKE = 0.2


def _wait[T](future: concurrent.futures.Future[T], timeout: float | None) -> T:
    """``future.result(timeout)``, waking every :data:`_WAKE` seconds (see there)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _WAKE if deadline is None else min(_WAKE, deadline - time.monotonic())
        try:
            return future.result(max(left, 0.0))
        except concurrent.futures.TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _start[T](
    coro: Coroutine[Any, Any, T],
    future: concurrent.futures.Future[T],
    finished: threading.Event,
    inner: Coroutine[Any, Any, T] | None = None,
) -> None:
    """On the I/O loop: run ``coro`` as a task whose outcome lands in ``future``; a cancel
    of ``future`` (from the waiting thread) cancels the task. Cancelled before the loop got
    here, nothing runs: ``coro`` and the ``inner`` one it wraps are closed unstarted (no
    "never awaited" warning)."""
    if future.cancelled():
        coro.close()
        if inner is not None:
            inner.close()
        finished.set()
        return
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro)

    def settle(done: asyncio.Task[T]) -> None:
        try:
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        except concurrent.futures.InvalidStateError:
            pass  # the waiting thread cancelled it first

    def relay(f: concurrent.futures.Future[T]) -> None:
        if f.cancelled():
            loop.call_soon_threadsafe(task.cancel)

    task.add_done_callback(settle)
    future.add_done_callback(relay)


async def hop[T](coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the I/O loop from whatever loop the caller runs on."""
    if on_io_loop():
        return await coro
    future = asyncio.run_coroutine_threadsafe(coro, io_loop())
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise
