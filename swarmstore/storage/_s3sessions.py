"""The HTTP sessions S3 nodes share: one s3fs filesystem per event loop per options token.

An aiohttp session belongs to the loop that opened it, so each loop gets its own clone of
a node's filesystem, shared by every node with the same options (a store unpickled by each
Dask task does not pay for a new S3 client each time). Closing is explicit and complete:
:func:`aclose` closes each session on its own loop, :func:`close_now` from any thread, and
a session whose loop is gone (or is garbage-collected with it) has its connections closed
at once, so no "Unclosed client session" reaches the garbage collector or the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["aclose", "close_now", "here"]

#: per event loop, per options token: the filesystem (and HTTP session) nodes share
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def here(token: str, make: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    """The running loop's filesystem for ``token``, made by ``make(loop)`` the first time."""
    loop = asyncio.get_running_loop()
    mine = _SHARED.get(loop)
    if mine is None:
        mine = _SHARED[loop] = {}
        # a loop dropped without closing its nodes: close what it opened when it goes
        weakref.finalize(loop, _close_all_now, mine)
    fs = mine.get(token)
    if fs is None:
        fs = mine[token] = make(loop)
    return fs


def close_now(token: str) -> None:
    """Close ``token``'s sessions on every loop, from any thread, without waiting: on a
    loop running in another thread the close is handed to it; elsewhere the connections
    are closed here (nodes sharing them reopen on their next request)."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, shared in list(_SHARED.items()):
        fs = shared.pop(token, None)
        if fs is None:
            continue
        if loop.is_running() and loop is not current and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: closed below
                loop.call_soon_threadsafe(_close_connections, fs)
                continue
        _close_connections(fs)


async def aclose(token: str) -> None:
    """Close ``token``'s sessions, each on the loop that opened it; a session whose loop
    no longer runs has its connections closed here."""
    current = asyncio.get_running_loop()
    for loop, shared in list(_SHARED.items()):
        fs = shared.pop(token, None)
        client = getattr(fs, "_s3", None)
        if client is None:
            _close_connections(fs)
        elif loop is current:
            await client.close()
        elif loop.is_running() and not loop.is_closed():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.close(), loop))
        else:
            _close_connections(fs)


def _close_all_now(shared: dict[str, Any]) -> None:
    for fs in list(shared.values()):
        _close_connections(fs)
    shared.clear()


def _close_connections(fs: Any) -> None:
    """Close every aiohttp connector of ``fs``'s client now (synchronous). aiobotocore 3
    keeps one session per proxy (``http_session._sessions``); a session whose connector is
    closed reads as closed, so its finalizer has nothing to say."""
    client = getattr(fs, "_s3", None)
    endpoint = getattr(client, "_endpoint", None)
    sessions = getattr(getattr(endpoint, "http_session", None), "_sessions", None) or {}
    for session in list(sessions.values()):
        connector = getattr(session, "connector", None)
        if connector is not None and not connector.closed:
            with contextlib.suppress(Exception):  # its loop is closed: still marked closed
                connector._close()
