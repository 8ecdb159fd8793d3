"""Run a backing store's async method from sync code, safely from any thread.

zarr's sync path (``get_sync`` and friends) calls a TieredStore from a thread with no
running event loop, usually a thread of the fused codec pipeline's pool. A miss there
uses the backing store's own sync method when it has one (``_store_supports_sync_io``),
else runs its coroutine on zarr's event loop (``zarr.core.sync.sync``), as zarr itself
does. Called *on* a thread that is running an event loop (zarr's own loop thread, say),
blocking on that loop would deadlock, so the coroutine runs on a private loop in its own
thread instead; a store whose connections are bound to the caller's loop refuses there
with an error, which is better than a hang.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store, _store_supports_sync_io
from zarr.core.sync import sync

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["run", "supports_sync_io"]

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def supports_sync_io(store: Store) -> bool:
    """Whether ``store`` serves zarr's full sync surface itself."""
    return _store_supports_sync_io(store)


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """The result of ``coro``, run from sync code without ever waiting on our own loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return sync(coro)
    loop = _private_loop()
    if loop is running:  # on the private loop itself: a fresh loop in a fresh thread
        return _in_new_thread(coro)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _private_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="swarmstore-cache-sync", daemon=True
            ).start()
            _loop = loop
        return _loop


def _in_new_thread[T](coro: Coroutine[Any, Any, T]) -> T:
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=main, name="swarmstore-cache-sync-once", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]
