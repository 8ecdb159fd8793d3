"""The ``overhead`` part of ``bench_compute.py``: SwarmPlugin's cost on trivial tasks.

Two lines per size: wall time with the plugin minus stock's on the same cluster shape
(interleaved, best of ``reps``), and the CPU time spent inside the plugin's hooks, which a
loaded machine does not stretch. Both per task, goal <= 50 us.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from _compute_scenarios import Spec, cluster
from _results import Line, emit
from distributed import wait

from swarmstore.compute import SwarmPlugin

BENCH = "compute"


def inc(x: int) -> int:
    return x + 1


class HookTimer:
    """CPU seconds spent inside a scheduler plugin's ``update_graph`` and ``transition`` hooks.

    Wraps the hooks of the installed instance and reads the thread's CPU clock, so the
    figure is the plugin's own work on the scheduler's event loop, which other processes on
    a loaded machine do not stretch (wall time does).
    """

    def __init__(self, plugin: Any) -> None:
        self.raw = 0.0
        self.calls = 0
        for name in ("update_graph", "transition"):
            setattr(plugin, name, self._timed(getattr(plugin, name)))
        self.cost = self._calibrate()

    @property
    def seconds(self) -> float:
        """Time inside the hooks, less what reading the clock around each call costs."""
        return max(self.raw - self.calls * self.cost, 0.0)

    def _timed(self, hook: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return hook(*args, **kwargs)
            finally:
                self.raw += time.thread_time() - t0
                self.calls += 1

        return timed

    def _calibrate(self, n: int = 20_000) -> float:
        """Seconds the wrapper adds per call: the same wrapper around a hook doing nothing."""
        raw, calls = self.raw, self.calls
        noop = self._timed(lambda *a, **k: None)
        for _ in range(n):
            noop("key", "processing", "memory", worker="w", nbytes=8)
        per_call = (self.raw - raw) / n
        self.raw, self.calls = raw, calls
        return per_call


async def overhead(sizes: Sequence[int], reps: int) -> None:
    specs = [Spec(2), Spec(2)]
    async with cluster(specs, False) as (stock, *_), cluster(specs, True) as (swarm, s, *_):
        timer = HookTimer(s.plugins[SwarmPlugin.name])
        for n in sizes:
            best = {False: float("inf"), True: float("inf")}
            hooks = float("inf")
            for rep in range(reps):
                for plugin, c in ((False, stock), (True, swarm)):
                    before = timer.seconds
                    t0 = time.perf_counter()
                    futs = c.map(inc, range(rep * n, (rep + 1) * n))
                    await wait(futs)
                    best[plugin] = min(best[plugin], time.perf_counter() - t0)
                    if plugin:
                        hooks = min(hooks, timer.seconds - before)
                    del futs
            per_task = (best[True] - best[False]) / n
            notes = (
                f"best of {reps}: stock {best[False]:.2f}s, plugin {best[True]:.2f}s "
                f"({n / best[False]:.0f} vs {n / best[True]:.0f} tasks/s)"
            )
            for measure, value in (
                (f"plugin overhead per task, {n:,} trivial tasks", max(per_task, 0.0)),
                (f"plugin hook time per task, {n:,} trivial tasks", hooks / n),
            ):
                emit(
                    Line(
                        BENCH, measure, value * 1e6, 50.0, "50 us budget", "us", "lower", 1.0, notes
                    )
                )
