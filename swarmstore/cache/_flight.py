"""Single flight within a process: concurrent misses of one entry share one fetch.

The first caller to miss ``(key, span)`` becomes the leader and fetches; later callers
(coroutines or threads) wait for its result. A write drops the key's flights, so a
reader that arrives after the write never joins a fetch that began before it. A
cancelled leader hands over: its followers fetch for themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmstore.cache._span import Span

__all__ = ["Flights", "LeaderCancelled"]


class LeaderCancelled(Exception):
    """The fetch a follower waited for was cancelled: the follower fetches itself."""


type Flight = concurrent.futures.Future[Any]


class Flights:
    """The fetches in flight, by ``(key, span)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: dict[tuple[str, Span], Flight] = {}
        self.coalesced = 0

    def join(self, key: str, span: Span) -> tuple[Flight, bool]:
        """``(future, leader)``: a new flight to lead, or the one to wait for."""
        with self._lock:
            fut = self._map.get((key, span))
            if fut is None:
                fut = self._map[(key, span)] = concurrent.futures.Future()
                return fut, True
            self.coalesced += 1
            return fut, False

    def land(
        self, key: str, span: Span, fut: Flight, result: Any = None, error: Any = None
    ) -> None:
        """End the flight ``fut`` with ``result`` (or ``error``)."""
        with self._lock:
            if self._map.get((key, span)) is fut:
                del self._map[(key, span)]
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def drop(self, key: str, *, prefix: bool = False) -> None:
        """Forget the flights of ``key`` (or prefix): later readers start their own."""
        with self._lock:
            for k in [k for k in self._map if (k[0].startswith(key) if prefix else k[0] == key)]:
                del self._map[k]

    @staticmethod
    async def wait(fut: Flight) -> Any:
        return await asyncio.shield(asyncio.wrap_future(fut))
