"""Fetch: the loop that walks one read's sources -- plan, probe, attempt, race, fail over.

:class:`Fetcher` applies the other modules' decisions to one read, in this order:

- the plan (:class:`~swarmstore.network._order.Planner`): the sources by expected time
  of this request's size, admitted ones first;
- a probe (:class:`~swarmstore.network._probe.Prober`) of a source the plan skips, if one
  is due, in the background;
- for each source in turn: an attempt through the
  :class:`~swarmstore.network._attempt.Runner`, inside a
  :class:`~swarmstore.network._hedge.Race` when it has a hedge delay (the learned p95,
  within the :class:`~swarmstore.network._hedge.HedgeBudget`) or a deadline (while an
  admitted source is left to try; a cut takes a token of a second budget, at the same
  rate, or the deadline stretches: in a brownout cuts would multiply requests); a
  failure, a miss or a deadline moves on to the next source;
- when every source failed after one was cut at its deadline, that source once more,
  with no deadline: a slow source that could answer never loses the read to the cut.

It knows sources only through the :class:`~swarmstore.network._source.Registry` (records,
deadlines, hedge delays); the router owns it and exposes its counters.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore.network._attempt import Job
from swarmstore.network._hedge import Race
from swarmstore.network._verdict import verdict

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from swarmstore.network._attempt import Runner
    from swarmstore.network._hedge import HedgeBudget
    from swarmstore.network._order import Plan, Planner
    from swarmstore.network._probe import Prober
    from swarmstore.network._source import Registry, Source

__all__ = ["Fetcher"]


class Fetcher:
    """Runs fetches for one router: ``hedge`` turns hedging on; the parts are the router's."""

    def __init__(
        self,
        registry: Registry,
        planner: Planner,
        runner: Runner,
        budget: HedgeBudget,
        prober: Prober | None,
        hedge: bool,
        cuts: HedgeBudget | None = None,
    ) -> None:
        self.registry = registry
        self.planner = planner
        self.runner = runner
        self.budget = budget
        self.prober = prober
        self.hedge = hedge
        #: tokens for deadline cuts (each sends the read on: an extra request); None: unlimited
        self.cuts = cuts
        self.stretched = 0  #: first attempts whose deadline stretched for want of a cut token
        self.fetches = 0  #: fetches started
        self.failovers = 0  #: attempts made after another source of the same fetch failed
        self.recuts = 0  #: cut sources asked again, undeadlined, after every other failed

    async def fetch[S, T](
        self,
        sources: Sequence[S],
        attempt: Callable[[S], Awaitable[T]],
        name: Callable[[S], str],
        cls: str,
        now: float,
        nbytes: int | None,
        size: Callable[[T], int] | None,
    ) -> tuple[S | None, T | None, dict[S, BaseException]]:
        """One read in QoS class ``cls`` at clock time ``now`` (see ``TransferRouter.fetch``)."""
        plan, job, hedging, limit = self._start(sources, attempt, name, cls, now, nbytes, size)
        ordered, entries, admitted, n = plan.sources, plan.entries, plan.admitted, len(plan.sources)
        task = asyncio.current_task()  # None outside a task: no hedge, no deadline
        failures: dict[S, BaseException] = {}
        cut: tuple[S, Source] | None = None  # the last source cut at its deadline
        i = 0
        while i < n:
            src, e = ordered[i], entries[i]
            i += 1
            if failures:
                self.failovers += 1
            # a deadline only while an admitted source is left to send the read on to
            deadline = (
                self.registry.deadline(e, limit) if task is not None and i < admitted else None
            )
            delay = None
            if hedging and task is not None and i < admitted:
                delay = self.registry.hedge_delay(e, entries[i:], limit)
            if deadline is None and delay is None:
                won = await self._plain(job, src, e, failures)
                if won is not None:
                    return src, won[0], failures
                continue
            assert task is not None
            race = self.race(job, task, src, e, delay, deadline, ordered, entries, i, limit)
            result = await race.run(failures)
            self.stretched += race.stretched
            if result is not None:
                return result[0], result[1], failures
            if race.cut:
                cut = (src, e)
            if race.fired:
                hedging = False  # one hedge decision per fetch
            if race.hedge is not None:
                i += 1  # the hedge's source was tried too, and failed
        if cut is not None:
            return await self._retry_cut(job, cut, failures)
        return None, None, failures

    async def _retry_cut[S](
        self, job: Job, cut: tuple[S, Source], failures: dict[S, BaseException]
    ) -> tuple[S | None, Any, dict[S, BaseException]]:
        """Every source failed after one was cut at its deadline: the cut was a bet on
        the others, and it lost. The cut source is asked again, with no deadline, so a read
        that one slow (not failed) source could answer is never lost to the cut."""
        src, e = cut
        self.recuts += 1
        won = await self._plain(job, src, e, failures)
        if won is None:
            return None, None, failures
        failures.pop(src, None)
        return src, won[0], failures

    def _start[S](
        self,
        sources: Sequence[S],
        attempt: Callable[[S], Awaitable[Any]],
        name: Callable[[S], str],
        cls: str,
        now: float,
        nbytes: int | None,
        size: Callable[[Any], int] | None,
    ) -> tuple[Plan[S], Job, bool, int | None]:
        """Count the fetch, earn its budget shares, plan it, and start a probe if one is due:
        ``(plan, job, hedging, size deadlines are taken at)``."""
        self.fetches += 1
        earned = self.budget.earn()  # every fetch earns its share, hedging on or off
        if self.cuts is not None:
            self.cuts.earn()
        planned = self.runner.typical if nbytes is None else nbytes
        limit = self.runner.large if nbytes is None else nbytes
        plan = self.planner.plan(sources, name, self.registry.entry, planned, cls, now)
        if self.prober is not None and len(plan.sources) > 1:
            self.prober.maybe(plan.sources[1:], name, plan.entries[0].stats.expected(0), now)
        return plan, Job(self.runner, attempt, cls, planned, size), self.hedge and earned, limit

    async def _plain[S](
        self, job: Job, src: S, e: Source, failures: dict[S, BaseException]
    ) -> tuple[Any] | None:
        """An attempt with no hedge and no deadline: ``(result,)``, or None when it failed."""
        try:
            return (await self.runner.run(job, src, e.name, None),)
        except Exception as exc:
            if verdict(exc) == "fatal":
                raise
            failures[src] = exc
            return None

    def race[S](
        self,
        job: Job,
        task: asyncio.Task[Any],
        src: S,
        e: Source,
        delay: float | None,
        deadline: float | None,
        ordered: Sequence[S],
        entries: Sequence[Source],
        i: int,
        limit: int | None,
    ) -> Race[S, Any]:
        """The race of an attempt at ``src`` with ``ordered[i:]`` left to try; a hedge's
        deadline is for ``limit`` bytes."""
        nxt = ordered[i] if i < len(ordered) else None
        nxt_name = entries[i].name if nxt is not None else ""
        hedge_deadline = None
        if nxt is not None and i + 1 < len(ordered):
            e_next, size, registry = entries[i], limit, self.registry

            def hedge_deadline() -> float:
                return registry.deadline(e_next, size)

        return Race(
            job.run, task, src, e.name, delay=delay, deadline=deadline, nxt=nxt,
            nxt_name=nxt_name, hedge_deadline=hedge_deadline,
            budget=self.budget if delay is not None else None, on_hedge=self.on_hedge,
            cuts=self.cuts, stretch=self.registry.settings.deadline_cold,
        )  # fmt: skip

    def on_hedge(self, nm: str, won: bool) -> None:
        """A hedge on ``nm`` started (``won=False``) or answered first (``won=True``)."""
        st = self.registry.entry(nm).stats
        if won:
            st.hedge_wins += 1
        else:
            st.hedges += 1
