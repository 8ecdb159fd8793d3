"""``bench_compute.py --only kill``: wall time with a kill -9 of the busiest holder.

Issue 19's replication goal: a job whose busiest holder of finished critical results is
killed (``kill -9``) at 60 % takes at most 1.10x the same job undisturbed, on the same
cluster (a ``LocalCluster`` of nanny-managed processes, so the nanny restarts the lost
worker). It runs the job of ``bench_replication.py`` (N critical tasks and a reduction)
with SwarmPlugin and with stock Dask, each once undisturbed and once killed, and reports
our killed / undisturbed ratio, stock's beside it.

Once no result is recomputed, the kill costs the task the victim was running and its
thread until the nanny has a new worker process registered (Dask's default
``multiprocessing-method: spawn``; ``METHODS`` can add ``forkserver``, whose restarted
worker forks from a server that imported ``distributed`` already: it measured no better
once on the loaded machine, 1.32x against spawn's 1.08x).
"""

from __future__ import annotations

import dask
from _results import Line, emit
from bench_replication import side

METHODS = ("spawn",)


def kill(quick: bool) -> None:
    n, delay = (16, 0.25) if quick else (40, 0.5)
    for method in METHODS:
        with dask.config.set({"distributed.worker.multiprocessing-method": method}):
            base, killed, _, recomputed = side(True, n, delay)
            st_base, st_killed, _, st_recomputed = side(False, n, delay)
        emit(
            Line(
                "compute",
                f"replication: wall time with a kill -9 of the busiest holder / no failure, "
                f"{method}",
                killed,
                base,
                "no-failure run (same cluster)",
                "s",
                "lower",
                1.10,
                f"{n} critical tasks of {delay}s on 4 one-thread nanny workers ({method}); "
                f"recomputed {recomputed}; stock Dask {st_killed / st_base:.2f}x "
                f"(recomputed {st_recomputed})",
            )
        )
