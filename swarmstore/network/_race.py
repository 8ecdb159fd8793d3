"""Hedging: race a late attempt against the next source, without a task per fetch.

:meth:`TransferRouter.fetch` tries sources in order and fails over; an attempt that may be
hedged runs through :class:`_Hedge`.

Most fetches never hedge, so the first attempt runs in the caller's own task, as a plain
``await``: no task, no ``asyncio.wait``, and no timer of its own either -- it joins the
event loop's :class:`_Watch`, one timer for every hedgeable attempt in flight on that loop
(a ``call_later`` per fetch cost a fifth of the router's time on the common path). Only
when the watch finds the attempt running past its hedge delay does a second task start,
on the next source. Then the two race:

- the hedge finishes first with a result: it cancels the caller's task, whose
  ``CancelledError`` surfaces inside the first attempt (which records itself as
  cancelled); the fetch catches it, takes the cancellation back with ``Task.uncancel()``
  and returns the hedge's result. A cancellation of the caller from outside at the same
  time is told apart by the task's cancellation count, as ``asyncio.timeout`` does, and
  propagates;
- the first attempt finishes first: the hedge is cancelled and awaited;
- the first attempt fails: the hedge, still running, is awaited as the last runner; if it
  fails too, failover goes on with the sources after it.

The hedge only ever cancels the caller while the first attempt is in flight and the
caller is suspended inside it, so the ``CancelledError`` is always delivered there and
never outlives the fetch. No task outlives the fetch either: a running hedge is cancelled
and awaited on every way out, and its exception, if any, is retrieved.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from swarmstore.network._router import TransferRouter

__all__ = ["_Hedge", "_Watch"]

logger = logging.getLogger(__name__)


class _Hedge[S, T]:
    """One attempt run inline under the loop's watch, and the hedge the watch may start."""

    __slots__ = (
        "attempt",
        "cls",
        "delay",
        "done",
        "due",
        "failures",
        "fired",
        "hedge",
        "name",
        "next",
        "router",
        "size",
        "t0",
        "task",
        "watch",
        "won",
    )

    def __init__(
        self,
        router: TransferRouter,
        task: asyncio.Task[Any],
        delay: float,
        next_src: S,
        attempt: Callable[[S], Awaitable[T]],
        name: Callable[[S], str],
        size: Callable[[T], int] | None,
        cls: str,
    ) -> None:
        self.router = router
        self.task = task
        self.watch = _Watch.of(task.get_loop(), router)
        self.delay = delay
        self.next = next_src
        self.attempt = attempt
        self.name = name
        self.size = size
        self.cls = cls
        self.t0: float | None = None  #: perf_counter when the first attempt got its slots
        self.due = 0.0  #: perf_counter when the watch looks at this attempt
        self.failures: dict[S, BaseException] = {}  #: the fetch's, from run() on
        self.hedge: asyncio.Task[T] | None = None
        self.fired = False  #: the first attempt ran late (a hedge was considered)
        self.done = False  #: the first attempt has finished, one way or another
        self.won = False  #: the hedge won while the first ran: the caller was cancelled

    async def run(self, src: S, nm: str, failures: dict[S, BaseException]) -> tuple[S, T] | None:
        """``(source, result)`` of the winner, or None when every attempt here failed."""
        task = self.task
        base = task.cancelling()
        self.failures = failures
        self.due = time.perf_counter() + self.delay
        self.watch.add(self)
        try:
            try:
                r = self.router
                result = await r._attempt(src, self.attempt, nm, self.size, self.cls, race=self)
            except BaseException as e:
                self._settle()
                if self.won:
                    return self._take_back(base, e)
                if not isinstance(e, Exception):
                    raise  # cancelled from outside (or the loop is closing)
                failures[src] = e
            else:
                self._settle()
                if self.won:  # the attempt swallowed our cancellation
                    return self._take_back(base, None)
                hedge = self.hedge
                if hedge is not None and hedge.done() and not hedge.cancelled():
                    if (exc := hedge.exception()) is not None:
                        failures.setdefault(self.next, exc)  # a replica to repair, maybe
                return src, result
            return await self._last_runner(failures)
        finally:
            if not self.done:  # left by a BaseException raised outside the attempt
                self._settle()
            hedge = self.hedge
            if hedge is not None and not hedge.done():
                hedge.cancel()
                await asyncio.gather(hedge, return_exceptions=True)

    def _settle(self) -> None:
        self.done = True
        self.watch.races.discard(self)

    def _take_back(self, base: int, exc: BaseException | None) -> tuple[S, T]:
        """The hedge won and cancelled us: undo that cancellation, return its result."""
        if self.task.uncancel() > base:  # cancelled from outside as well: honour that
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            raise asyncio.CancelledError
        return self._hedge_result()

    def _hedge_result(self) -> tuple[S, T]:
        assert self.hedge is not None
        self.router._stats(self.name(self.next)).hedge_wins += 1
        return self.next, self.hedge.result()

    async def _last_runner(self, failures: dict[S, BaseException]) -> tuple[S, T] | None:
        """The first attempt failed; wait for the hedge, if one runs."""
        hedge = self.hedge
        if hedge is None:
            return None
        if not hedge.done():
            await asyncio.wait((hedge,))
        exc = hedge.exception()  # a hedge cancelled from elsewhere raises here
        if exc is None:
            return self._hedge_result()
        failures[self.next] = exc
        return None

    # --- callbacks, run by the event loop while the caller is suspended -----------------------
    def check(self, now: float) -> float | None:
        """The watch's look at ``due``: hedge if the attempt is late; the next due, or None."""
        if self.done:
            return None
        t0 = self.t0
        due = now + self.delay if t0 is None else t0 + self.delay
        if due > now:  # still waiting for a lane slot, or started after it joined the watch
            self.due = due
            return due
        self.fired = True
        r = self.router
        if r._take_hedge_token():
            nm = self.name(self.next)
            r._stats(nm).hedges += 1
            coro = r._attempt(self.next, self.attempt, nm, self.size, self.cls)
            # The hedge runs in a copy of the caller's context, as a task it created would.
            self.hedge = self.task.get_loop().create_task(
                coro, context=self.task.get_context().copy()
            )
            self.hedge.add_done_callback(self._hedge_done)
        return None

    def _hedge_done(self, hedge: asyncio.Task[T]) -> None:
        if hedge.cancelled() or self.done:
            if not hedge.cancelled():
                hedge.exception()  # retrieved: never logged as "never retrieved"
            return
        exc = hedge.exception()
        if exc is not None:
            self.failures[self.next] = exc  # in the order attempts failed
        else:
            self.won = True
            self.task.cancel()


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = (
    weakref.WeakKeyDictionary()
)


class _Watch:
    """One timer per event loop that looks at every hedgeable attempt in flight on it.

    An attempt joins with the time it is due (``race.due``) and leaves when it finishes.
    Each firing looks at the attempts that are due, which hedge or ask to be looked at
    again, and arms the next firing unless a timer already pending comes first. Timers are
    never cancelled and the watch holds no handle, only a weak reference to its loop, so a
    closed loop is never kept alive by it.
    """

    __slots__ = ("armed", "loop", "races")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.races: set[_Hedge[Any, Any]] = set()
        self.armed: list[float] = []  #: due times of the timers pending in the loop

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop, router: TransferRouter) -> _Watch:
        """The watch of ``loop`` (the router remembers the last one it used)."""
        watch = router._watch
        if watch is None or watch.loop() is not loop:
            watch = _WATCHES.get(loop)
            if watch is None:
                watch = _WATCHES[loop] = _Watch(loop)
            router._watch = watch
        return watch

    def add(self, race: _Hedge[Any, Any]) -> None:
        self.races.add(race)
        armed = self.armed
        if not armed or race.due < armed[0]:
            self._arm(race.due)

    def _arm(self, due: float) -> None:
        loop = self.loop()
        if loop is None:
            return
        self.armed.append(due)
        self.armed.sort()
        loop.call_later(max(0.0, due - time.perf_counter()), self._fire, due)

    def _fire(self, due: float) -> None:
        self.armed.remove(due)
        loop = self.loop()
        if loop is not None:
            # Look one step later: an attempt whose own timer fired in this same step (its
            # sleep or I/O ended just before the due time) gets to finish first.
            loop.call_soon(self._scan)

    def _scan(self) -> None:
        now = time.perf_counter()
        following = math.inf
        for race in list(self.races):
            try:
                nxt = race.check(now) if race.due <= now else race.due
            except Exception:  # a ``name`` that raises: no hedge for it, the others go on
                logger.exception("Hedge check failed; that attempt runs unhedged")
                nxt = None
            if nxt is None:
                self.races.discard(race)
            elif nxt < following:
                following = nxt
        if following < math.inf and not (self.armed and self.armed[0] <= following):
            self._arm(following)
