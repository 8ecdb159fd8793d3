"""Prober: measure the sources reads do not reach, with a real small request, one at a time.

Two kinds of source get probes, started from the fetches that pass (no timer runs while
nothing is read):

- an ejected source whose ejection time is over (its circuit is half-open): the probe is
  the trial that closes the circuit, so reads go back to a recovered node as soon as a
  probe sees it answer, and no read ever waits on a dead one;
- a healthy source that reads skip: probed once ``interval`` times (its expected time /
  the best one's) has passed since it was last tried, capped at ``max_interval``. A
  source close to the best is probed every ``interval``, one ten times slower ten times
  less often; when the best slows down, the others' intervals shrink with it.

A probe that answers in less than half the time its source is expected to take says the
source got faster (a slow node recovered, a frozen one thawed): that source is probed
again at the next look, up to ``RECENT // 2`` times in a row -- enough answers to move the
median of its cost model's short window -- so reads go back to it within a few looks of
the first such probe rather than a few intervals.

A probe is an attempt like any other (lanes in the lowest QoS class, a deadline, figures,
circuit), run through the router's :class:`~swarmstore.network._attempt.Runner`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from swarmstore.network._attempt import Job
from swarmstore.network._hedge import Race
from swarmstore.network._model import RECENT

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from swarmstore.network._attempt import Runner
    from swarmstore.network._source import Source

__all__ = ["Prober"]

logger = logging.getLogger(__name__)


class Prober:
    """Decide which source to probe and run at most one probe at a time."""

    def __init__(
        self,
        runner: Runner,
        lookup: Callable[[str], Source],
        deadline: Callable[[Source, int], float],
        cls: str,
        probe: Callable[[Any], Awaitable[Any]] | bool,
        interval: float,
        max_interval: float,
    ) -> None:
        self.runner = runner
        self.lookup = lookup
        self.deadline = deadline  #: seconds a probe of a source may take
        self.cls = cls  #: the QoS class probes run in
        self.fn = probe if callable(probe) else _ping
        #: whether a source can be probed: with ``probe=True``, if it has a ``ping()``
        self.accepts = (lambda _src: True) if callable(probe) else _has_ping
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.probing: set[str] = set()
        self.started = 0  #: probes started
        #: sources a probe found faster than expected -> (confirmations left to send, clock
        #: time they are due by: a source reads went back to meanwhile needs none)
        self.confirming: dict[str, tuple[int, float]] = {}
        self._next_look = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    def due(self, e: Source, best: float | None, now: float) -> bool:
        """Whether ``e`` needs a probe now (``best``: the expected time reads get now)."""
        c = e.circuit
        if c.opened_at is not None:
            return c.admits(now)  # half-open, no trial out: this probe is the trial
        last = e.stats.last_tried
        if last is None:
            return False  # never tried: the order sends it a read first anyway
        confirm = self.confirming.get(e.name)
        if confirm is not None and now < confirm[1]:
            return True  # its last probe was fast: confirm before the interval is up
        interval = self.interval
        mine = e.stats.expected(0)
        if best and mine is not None and mine > best:
            interval = min(self.max_interval, interval * mine / best)
        return now - last >= interval

    def maybe[S](
        self, sources: Sequence[S], name: Callable[[S], str], best: float | None, now: float
    ) -> None:
        """Start a probe of the first of ``sources`` that needs one, unless one is running.

        Looked at most every ``interval / 10`` (a fetch stream does not pay for it each time).
        """
        if self.probing or now < self._next_look:
            return
        self._next_look = now + self.interval / 10
        for src in sources:
            nm = name(src)
            if self.accepts(src) and self.due(self.lookup(nm), best, now):
                self.probing.add(nm)
                self.started += 1
                task = asyncio.ensure_future(self._probe(src, nm))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return

    async def _probe(self, src: Any, nm: str) -> None:
        try:
            await self.run(src, nm)
        except Exception as e:
            logger.debug("Probe of %s failed: %r", nm, e)
        finally:
            self.probing.discard(nm)

    async def run(self, src: Any, nm: str) -> None:
        """One probe of ``src``: a small request in the probe class, with a deadline."""
        e = self.lookup(nm)
        e.stats.probes += 1
        before = e.stats.expected(0)
        job = Job(self.runner, self.fn, self.cls, 0, size=_nothing)
        task = asyncio.current_task()
        assert task is not None
        failures: dict[Any, BaseException] = {}
        t0 = time.perf_counter()
        race = Race(job.run, task, src, nm, deadline=self.deadline(e, 0))
        if await race.run(failures) is None:
            logger.debug("Probe of %s failed: %r", nm, failures.get(src))
            self.confirming.pop(nm, None)
            return
        self.confirmed(nm, before, time.perf_counter() - t0)

    def confirmed(self, nm: str, before: float | None, took: float) -> None:
        """A probe of ``nm`` answered in ``took`` s where ``before`` s was expected: a much
        faster answer asks for another probe soon (see the module's docstring)."""
        if before is None or took >= before / 2:
            self.confirming.pop(nm, None)
            return
        left = self.confirming.get(nm, (RECENT // 2 + 1, 0.0))[0] - 1
        if left > 0:
            self.confirming[nm] = (left, self.runner.clock() + self.interval)
        else:
            self.confirming.pop(nm, None)  # enough: back to the interval

    async def close(self) -> None:
        """Cancel the probes started from this event loop and wait for them."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        for t in mine:
            t.cancel()
        await asyncio.gather(*mine, return_exceptions=True)


async def _ping(src: Any) -> None:
    await src.ping()


def _has_ping(src: Any) -> bool:
    return callable(getattr(src, "ping", None))


def _nothing(_result: Any) -> int:
    return 0
