"""Where each task of a compute scenario ran, and when: a text timeline per worker thread.

Usage: ``python benchmarks/_compute_profile.py SCENARIO [MODE ...] [--t SECONDS]``; modes as
in ``bench_compute.py`` (default: stock swarm). One row per worker thread, one column per
``t``; each cell shows the first letter of the task prefix that ran there most of that
interval (``.``: idle). GPU workers are marked ``G``. Read it against the scenario's lower
bound (printed) to see which placement decision cost the time: a GPU idle while GPU work was
ready, CPU work queued behind a full worker while another idles, an urgent job behind a flood.
This is a diagnostic, not a benchmark: it emits no result lines.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from _compute_scenarios import SCENARIOS, Ctx, Scenario, cluster, work
from bench_compute import PLUGIN_MODES
from distributed.diagnostics.task_stream import TaskStreamPlugin


def _prefix(key: Any) -> str:
    name = key if isinstance(key, str) else str(key)
    return name.split("-", 1)[0]


def timeline(records: list[dict[str, Any]], t0: float, t: float, roles: dict[str, list[str]]):
    """Rows of cells per worker thread: greedy thread assignment of each worker's tasks."""
    per_worker: dict[str, list[tuple[float, float, str]]] = {}
    for r in records:
        for ss in r["startstops"]:
            if ss["action"] == "compute":
                span = (ss["start"] - t0, ss["stop"] - t0, _prefix(r["key"]))
                per_worker.setdefault(r["worker"], []).append(span)
    gpu = {a for role in ("gpu", "big") for a in roles.get(role, [])}
    rows = []
    for addr, spans in sorted(per_worker.items(), key=lambda i: (i[0] in gpu, i[0])):
        threads: list[list[tuple[float, float, str]]] = []
        for span in sorted(spans):
            lane = next((ln for ln in threads if ln[-1][1] <= span[0] + t / 4), None)
            if lane is None:
                threads.append(lane := [])
            lane.append(span)
        for i, lane in enumerate(threads):
            end = max(s[1] for s in lane)
            cells = []
            for k in range(int(end / t) + 1):
                lo, hi = k * t, (k + 1) * t
                best = max(lane, key=lambda s: min(s[1], hi) - max(s[0], lo))
                cells.append(best[2][0] if min(best[1], hi) - max(best[0], lo) > t / 2 else ".")
            tag = "G" if addr in gpu else " "
            rows.append(f"{tag} {addr.rsplit(':', 1)[-1]:>6}/{i} |{''.join(cells)}")
    return rows


async def profile(sc: Scenario, mode: str, t: float) -> None:
    async with cluster(sc.workers, PLUGIN_MODES.get(mode, False)) as (c, s, roles, add):
        plugin = TaskStreamPlugin(s)
        s.add_plugin(plugin)
        await c.submit(work, 0, pure=False)
        ctx = Ctx(c, t, mode, roles, add)
        t0 = time.time()
        p0 = time.perf_counter()
        await sc.run(ctx)
        elapsed = time.perf_counter() - p0
        records = list(plugin.buffer)
    bound = sc.bound(t)
    ratio = elapsed / bound
    print(f"--- {sc.name} {mode}: makespan {ratio:.2f}x bound ({bound / t:.1f}t) {ctx.extra}")
    for row in timeline(records, t0, t, roles):
        print(row)


async def amain(args: argparse.Namespace) -> None:
    sc = next(s for s in SCENARIOS if s.name == args.scenario)
    for mode in args.modes or ("stock", "swarm"):
        await profile(sc, mode, args.t)


if __name__ == "__main__":
    logging.getLogger("distributed").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("modes", nargs="*")
    ap.add_argument("--t", type=float, default=0.1)
    asyncio.run(amain(ap.parse_args()))
