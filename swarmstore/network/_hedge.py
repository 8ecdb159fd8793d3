"""Hedge and deadline: race a late attempt against the next source; cut one that hangs.

An attempt that may be hedged, or has a deadline, runs through a :class:`Race`. The first
attempt runs in the caller's own task, as a plain ``await``: no task and no timer of its
own -- it joins the event loop's :class:`Watch`, one timer for every race in flight on that
loop. The watch looks at an attempt when it is due:

- past its *hedge delay*, and a hedge token is free (:class:`HedgeBudget`): a second task
  starts on the next source, and the two race;
- past its *deadline*: the attempt is cut -- it counts as a failure of its source
  (:class:`~swarmstore.errors.DeadlineExceeded`) and the fetch moves on -- if a cut token
  is free (``cuts``): a cut sends the read to another source, an extra request, so cuts
  share the hedges' budget. Without a token (a brownout: every source late at once) the
  deadline stretches to ``stretch`` (the cold deadline) instead, and the attempt is cut
  only past that;
- a hedge has a deadline of its own, and is cut the same way.

Delays and deadlines run from when the request got its lane slots (``Track.t0``):
waiting for a slot is queueing, not lateness.

Cutting or overtaking the first attempt means cancelling the caller's task, whose
``CancelledError`` surfaces inside the attempt (the runner records why, from
``Track.reason``); the race takes the cancellation back with ``Task.uncancel()``. A
cancellation of the caller from outside at the same time is told apart by the task's
cancellation count, as ``asyncio.timeout`` does, and propagates. The race only ever cancels
the caller while the first attempt is in flight, so the ``CancelledError`` is always
delivered there. No task outlives the race: a running hedge is cancelled and awaited on
every way out, and its exception, if any, is retrieved.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Literal

from swarmstore.errors import DeadlineExceeded
from swarmstore.network._verdict import verdict

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["HedgeBudget", "Race", "Track", "Watch"]

logger = logging.getLogger(__name__)

_MIN_DELAY = 0.0005


class HedgeBudget:
    """A token bucket: each fetch earns ``budget`` of a token; a small cap bounds bursts.

    The router keeps two: one for hedges (empty at first, cap ``1 + 20 x budget``) and one
    for deadline cuts (full at first, ``cap`` = the strikes that eject a source, so one
    hung source is always cut until it is ejected).
    """

    __slots__ = ("budget", "cap", "hedges", "tokens")

    def __init__(self, budget: float, cap: float | None = None, *, full: bool = False) -> None:
        self.budget = budget
        self.cap = 1 + 20 * budget if cap is None else cap
        self.tokens = self.cap if full else 0.0
        self.hedges = 0  #: tokens taken (hedges started, attempts cut)

    def earn(self) -> bool:
        """One fetch more; True when a hedge token is available to it."""
        tokens = self.tokens + self.budget
        self.tokens = tokens if tokens < self.cap else self.cap
        return self.tokens >= 1

    def take(self) -> bool:
        if self.tokens < 1:
            return False
        self.tokens -= 1
        self.hedges += 1
        return True


class Track:
    """One attempt as the watch sees it: when its request started, and why it was cut."""

    __slots__ = ("reason", "t0")

    def __init__(self) -> None:
        self.t0: float | None = None  #: perf_counter when the request got its slots
        self.reason: Literal["deadline", "overtaken"] | None = None


class Race[S, T]:
    """The first attempt, run inline under the loop's watch, and the hedge it may start.

    ``run(source, name, track)`` is the router's attempt (lanes, figures, circuit).
    ``delay`` (seconds, or None: no hedge) and ``deadline`` (None: none) apply to the first
    attempt, on ``src``; ``hedge_deadline()`` (called when the hedge starts) to a hedge on
    ``nxt``. ``on_hedge(name, won)``
    is told when a hedge starts (``won=False``) and when it answers first (``won=True``).
    """

    __slots__ = (
        "_hedge_deadline", "budget", "cut", "cuts", "deadline", "delay", "done", "due",
        "failures", "fired", "first", "hedge", "hedge_cut", "hedge_deadline", "hedge_track",
        "name", "nxt", "nxt_name", "on_hedge", "run_attempt", "stretch", "stretched", "task",
        "track", "watch", "won",
    )  # fmt: skip

    def __init__(
        self,
        run: Callable[[S, str, Track], Awaitable[T]],
        task: asyncio.Task[Any],
        src: S,
        name: str,
        *,
        delay: float | None = None,
        deadline: float | None = None,
        nxt: S | None = None,
        nxt_name: str = "",
        hedge_deadline: Callable[[], float | None] | None = None,
        budget: HedgeBudget | None = None,
        on_hedge: Callable[[str, bool], None] | None = None,
        cuts: HedgeBudget | None = None,
        stretch: float | None = None,
    ) -> None:
        self.run_attempt = run
        self.task = task
        self.watch = Watch.of(task.get_loop())
        self.first, self.name = src, name
        self.nxt, self.nxt_name = nxt, nxt_name
        self.delay = None if delay is None else max(delay, _MIN_DELAY)
        self.deadline = deadline
        self.hedge_deadline: float | None = None  #: set when the hedge starts
        self._hedge_deadline = hedge_deadline
        self.budget = budget
        self.on_hedge = on_hedge
        self.cuts = cuts  #: tokens for cutting the first attempt (None: always cut)
        self.stretch = stretch  #: its deadline when no cut token is free
        self.stretched = False  #: the first attempt's deadline was stretched
        self.track = Track()
        self.hedge_track = Track()
        self.due = 0.0  #: perf_counter when the watch looks at this race next
        self.failures: dict[S, BaseException] = {}  #: the fetch's, from run() on
        self.hedge: asyncio.Task[T] | None = None
        self.fired = False  #: the first attempt ran past its hedge delay
        self.done = False  #: the first attempt has finished, one way or another
        self.won = False  #: the hedge answered first: the caller was cancelled
        self.cut = False  #: the first attempt passed its deadline: the caller was cancelled
        self.hedge_cut = False

    async def run(self, failures: dict[S, BaseException]) -> tuple[S, T] | None:
        """``(source, result)`` of the winner, or None when every attempt here failed.

        Failed sources go into ``failures`` in the order they failed; an exception that is
        no verdict on a source (:func:`~swarmstore.network._verdict.verdict` "fatal") is
        raised.
        """
        task, src = self.task, self.first
        base = task.cancelling()
        self.failures = failures
        self.due = time.perf_counter() + self._first_wait()
        self.watch.add(self)
        try:
            try:
                result = await self.run_attempt(src, self.name, self.track)
            except BaseException as e:
                self.done = True
                if self.won or self.cut:
                    self._take_back(base, e)
                    if self.won:
                        return self._hedge_result()
                    failures[src] = self._deadline_error(self.name, self.deadline)
                elif not isinstance(e, Exception) or verdict(e) == "fatal":
                    raise
                else:
                    failures[src] = e
            else:
                self.done = True
                if self.won or self.cut:  # the attempt swallowed our cancellation
                    self._take_back(base, None)
                    if self.won:
                        return self._hedge_result()
                self._note_hedge_failure()
                return src, result
            return await self._last_runner(failures)
        finally:
            self.done = True
            self.watch.races.discard(self)
            hedge = self.hedge
            if hedge is not None and not hedge.done():
                hedge.cancel()
                await asyncio.gather(hedge, return_exceptions=True)

    def _first_wait(self) -> float:
        return min(math.inf if d is None else d for d in (self.delay, self.deadline))

    def _take_back(self, base: int, exc: BaseException | None) -> None:
        """We cancelled the caller: undo that; raise if it was cancelled from outside too."""
        if self.task.uncancel() > base:
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            raise asyncio.CancelledError

    def _hedge_result(self) -> tuple[S, T]:
        assert self.hedge is not None and self.nxt is not None
        if self.on_hedge is not None:
            self.on_hedge(self.nxt_name, True)
        return self.nxt, self.hedge.result()

    def _note_hedge_failure(self) -> None:
        hedge = self.hedge
        if hedge is not None and hedge.done() and not hedge.cancelled():
            if (exc := hedge.exception()) is not None and self.nxt is not None:
                self.failures.setdefault(self.nxt, exc)  # a replica to repair, maybe

    async def _last_runner(self, failures: dict[S, BaseException]) -> tuple[S, T] | None:
        """The first attempt failed; wait for the hedge, if one runs."""
        hedge = self.hedge
        if hedge is None:
            return None
        if not hedge.done():
            await asyncio.wait((hedge,))
        assert self.nxt is not None
        if hedge.cancelled():  # cut at its deadline (the failure is recorded)
            failures.setdefault(self.nxt, self._deadline_error(self.nxt_name, self.hedge_deadline))
            return None
        exc = hedge.exception()
        if exc is None:
            return self._hedge_result()
        failures[self.nxt] = exc
        if verdict(exc) == "fatal":
            raise exc
        return None

    @staticmethod
    def _deadline_error(name: str, deadline: float | None) -> DeadlineExceeded:
        return DeadlineExceeded(f"{name}: no answer within the deadline of {deadline or 0:.3f} s")

    # --- callbacks, run by the event loop while the caller is suspended -----------------------
    def check(self, now: float) -> float | None:
        """The watch's look: hedge or cut what is late; the next due time, or None."""
        nxt = self._check_hedge(now)
        if self.done:
            return nxt
        t0 = self.track.t0
        if t0 is None:  # still waiting for a lane slot
            return min(nxt, now + self._first_wait())
        if self.delay is not None and not self.fired:
            if now >= t0 + self.delay:
                self._fire()
                nxt = min(nxt, self._check_hedge(now))
            else:
                nxt = min(nxt, t0 + self.delay)
        if self.deadline is not None and not (self.cut or self.won):
            if now >= t0 + self.deadline and not self._stretch():
                self.cut = True
                self.track.reason = "deadline"
                self.task.cancel()
            else:
                nxt = min(nxt, t0 + self.deadline)
        return nxt if nxt < math.inf else None

    def _stretch(self) -> bool:
        """At the deadline: True when the attempt is not cut now (no cut token is free, and
        the deadline was stretched to ``stretch``); False to cut it."""
        cuts, stretch = self.cuts, self.stretch
        if cuts is None or self.stretched or stretch is None or stretch <= (self.deadline or 0):
            return False
        if cuts.take():
            return False
        self.stretched = True
        self.deadline = stretch
        return True

    def _check_hedge(self, now: float) -> float:
        hedge, limit = self.hedge, self.hedge_deadline
        if hedge is None or hedge.done() or limit is None or self.hedge_cut:
            return math.inf
        t0 = self.hedge_track.t0
        if t0 is None:
            return now + limit
        if now < t0 + limit:
            return t0 + limit
        self.hedge_cut = True
        self.hedge_track.reason = "deadline"
        hedge.cancel()
        return math.inf

    def _fire(self) -> None:
        self.fired = True
        if self.nxt is None or self.budget is None or not self.budget.take():
            return
        if self.on_hedge is not None:
            self.on_hedge(self.nxt_name, False)
        if self._hedge_deadline is not None:
            self.hedge_deadline = self._hedge_deadline()
        coro = self.run_attempt(self.nxt, self.nxt_name, self.hedge_track)
        # The hedge runs in a copy of the caller's context, as a task it created would.
        self.hedge = self.task.get_loop().create_task(coro, context=self.task.get_context().copy())
        self.hedge.add_done_callback(self._hedge_done)

    def _hedge_done(self, hedge: asyncio.Task[T]) -> None:
        if hedge.cancelled():
            if self.hedge_cut and self.nxt is not None:
                self.failures.setdefault(
                    self.nxt, self._deadline_error(self.nxt_name, self.hedge_deadline)
                )
            return
        exc = hedge.exception()  # retrieved: never logged as "never retrieved"
        if self.done:
            return
        if exc is not None:
            if self.nxt is not None:
                self.failures[self.nxt] = exc  # in the order attempts failed
        elif not self.cut:
            self.won = True
            self.track.reason = "overtaken"
            self.task.cancel()


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watch] = weakref.WeakKeyDictionary()
_LAST: list[Watch | None] = [None]  # the watch used last (it holds its loop weakly)


class Watch:
    """One timer per event loop that looks at every race in flight on it.

    A race joins with the time it is due (``race.due``) and leaves when its check returns
    None. Each firing looks at the races that are due, which act or ask to be looked at
    again, and arms the next firing unless a timer already pending comes first. Timers are
    never cancelled and the watch holds only a weak reference to its loop, so a closed loop
    is never kept alive by it.
    """

    __slots__ = ("__weakref__", "armed", "loop", "races")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.races: set[Race[Any, Any]] = set()
        self.armed: list[float] = []  #: due times of the timers pending in the loop

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> Watch:
        """The watch of ``loop`` (the last one asked for is kept at hand, weakly)."""
        last = _LAST[0]
        if last is not None and last.loop() is loop:
            return last
        watch = _WATCHES.get(loop)
        if watch is None:
            watch = _WATCHES[loop] = Watch(loop)
        _LAST[0] = watch
        return watch

    def add(self, race: Race[Any, Any]) -> None:
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
            except Exception:  # a bug in a callback: that race goes on unwatched
                logger.exception("Hedge/deadline check failed; that attempt runs unwatched")
                nxt = None
            if nxt is None:
                self.races.discard(race)
            else:
                race.due = nxt
                following = min(following, nxt)
        if following < math.inf and not (self.armed and self.armed[0] <= following):
            self._arm(following)
