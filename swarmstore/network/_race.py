"""_Race: one fetch -- try sources in order, hedge the first once when it runs late."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from swarmstore.network._router import TransferRouter

__all__ = ["_Race"]


class _Race[S, T]:
    """One fetch: try sources in order, hedge the first once when it runs late, fail over.

    The winner's result is returned; every other attempt still running is cancelled and
    awaited, so no request outlives the fetch that started it.
    """

    def __init__(
        self,
        router: TransferRouter,
        ordered: list[S],
        admitted: int,
        measured: set[str],
        attempt: Callable[[S], Awaitable[T]],
        name: Callable[[S], str],
        nbytes: int | None,
        size: Callable[[T], int] | None,
    ) -> None:
        self.router = router
        self.pending = deque(ordered)
        self.admitted = admitted  # the first ``admitted`` sources have admitting circuits
        self.tried = 0
        self.measured = measured
        self.attempt = attempt
        self.name = name
        self.nbytes = nbytes
        self.size = size
        self.running: dict[asyncio.Task[T], S] = {}
        self.started: dict[str, float] = {}
        self.failures: dict[S, BaseException] = {}
        self.hedge: asyncio.Task[T] | None = None
        self.hedge_considered = False  # at most one hedge decision per fetch

    def _start(self) -> asyncio.Task[T]:
        src = self.pending.popleft()
        self.tried += 1
        nm = self.name(src)
        coro = self.router._attempt(src, self.attempt, nm, self.size, self.started)
        task = asyncio.ensure_future(coro)
        self.running[task] = src
        return task

    def _late_in(self) -> float | None:
        """Seconds until the single running attempt is late; None: no hedge for it."""
        r = self.router
        if self.hedge_considered or not (r.hedge and len(self.running) == 1 and self.pending):
            return None
        if self.tried >= self.admitted:  # hedge only to a source whose circuit admits
            return None
        first = self.name(next(iter(self.running.values())))
        others = [self.name(p) for p in self.pending]
        delay = r._hedge_delay(first, others, self.nbytes, own=first in self.measured)
        if delay is None:
            return None
        t0 = self.started.get(first)
        if t0 is None:  # still waiting for a lane slot: look again after one delay
            return delay
        return max(0.0, t0 + delay - time.perf_counter())

    def _hedge_now(self) -> None:
        """The attempt is late: start the next source, or give up hedging without a token."""
        self.hedge_considered = True
        if self.router._take_hedge_token():
            self.hedge = self._start()
            self.router._stats(self.name(self.running[self.hedge])).hedges += 1

    async def run(self) -> tuple[S | None, T | None, dict[S, BaseException]]:
        try:
            while True:
                if not self.running:
                    if not self.pending:
                        return None, None, self.failures
                    if self.failures:
                        self.router.failovers += 1
                    self._start()
                timeout = self._late_in()
                done, _ = await asyncio.wait(
                    self.running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if self._late_in() == 0.0:
                        self._hedge_now()
                    continue
                for task in done:
                    src = self.running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        if task is self.hedge:
                            self.router._stats(self.name(src)).hedge_wins += 1
                        return src, task.result(), self.failures
                    self.failures[src] = exc
        finally:
            for task in self.running:
                task.cancel()
            if self.running:
                await asyncio.gather(*self.running, return_exceptions=True)
