"""Compute benchmarks: SwarmPlugin against stock Dask (and hand-set restrictions), same run.

Usage: ``python benchmarks/bench_compute.py [--quick] [--only NAME ...] [--scenarios a b ...]
[--modes stock hand swarm strict]``; names: scenarios, memory, overhead, placement-cost,
affinity, kill.

- ``scenarios``: the mixed GPU/CPU scenarios of ``_compute_scenarios.py`` (a-f shaped after
  issue 19's table, g-h ours). Each runs >= 3 times per mode (1 with ``--quick``), stock,
  hand-set, plugin (defaults) and plugin with ``share_gpu_threads=False`` interleaved, each
  on a fresh in-process cluster; the median
  makespan goes out per plugin mode as two lines: vs its computed lower bound (goal <= 1.2)
  and vs stock (goal <= 1.0), the hand-set median beside them. Scenarios with an urgent job
  add its latency vs its bound (its critical path; goal <= 1.5). Scenario h adds it against
  the no-preemption bound too (goal <= 1.5): measured at the job's arrival, the least time
  in which its chains finish once the threads end the tasks they run (Dask never preempts
  one; the critical path alone is out of reach while every thread is busy).
- ``memory``: a CPU-decode -> GPU-compute pipeline whose decodes outrun the GPU; peak bytes
  in worker memory (managed, summed over the cluster), plugin vs stock (goal <= 0.5).
- ``overhead``: 10,000 and 50,000 trivial tasks (2,000 with ``--quick``); plugin overhead
  per task (goal <= 50 us), as wall time with the plugin vs stock on the same cluster shape,
  interleaved, best of 3, and as time spent inside the plugin's hooks (load-proof).
- ``placement-cost``: Placer + Dispatcher cost per task at 1,000 simulated workers / 10.
- ``affinity``: two passes over a zarr array on S3 (moto) through TieredStore on 3 worker
  processes: remote bytes on pass 2 / pass 1 (goal <= 0.05), stock beside it.
- ``kill``: a job whose busiest holder is killed (kill -9) mid-run, on nanny-managed worker
  processes, over the same job undisturbed (goal <= 1.10), stock's ratio beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import dask
from _compute_kill import kill
from _compute_overhead import overhead
from _compute_scenarios import SCENARIOS, Ctx, Scenario, Spec, cluster, work
from _results import Line, emit
from distributed import Client, SchedulerPlugin, wait

from swarmstore.compute import SwarmPlugin
from swarmstore.compute.dispatch import Dispatcher, Job
from swarmstore.compute.placement import Placer, WorkerInfo
from swarmstore.compute.requirements import Requirements

BENCH = "compute"
MODES = ("stock", "hand", "swarm", "strict")
#: SwarmPlugin options per plugin mode (``swarm``: the defaults, GPU workers lend CPU work
#: the threads their GPU work does not need; ``strict``: CPU work kept off GPU workers while
#: a CPU-only worker takes work, ``share-gpu-threads: false``)
PLUGIN_MODES: dict[str, dict[str, Any]] = {"swarm": {}, "strict": {"share_gpu_threads": False}}


# ---------------------------------------------------------------- scenarios
async def run_scenario(sc: Scenario, mode: str, t: float) -> tuple[float, dict[str, float]]:
    async with cluster(sc.workers, PLUGIN_MODES.get(mode, False)) as (c, _, roles, add):
        await c.submit(work, 0, pure=False)  # everyone connected
        ctx = Ctx(c, t, mode, roles, add)
        t0 = time.perf_counter()
        await sc.run(ctx)
        return time.perf_counter() - t0, ctx.extra


async def scenarios(
    t: float, reps: int, names: Sequence[str] = (), modes: Sequence[str] = MODES
) -> None:
    for sc in SCENARIOS:
        if names and sc.name not in names:
            continue
        runs: dict[str, list[float]] = {m: [] for m in modes}
        urgent: dict[str, list[float]] = {m: [] for m in modes}
        bounds: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(reps):
            for mode in modes:  # interleaved: load changes hit every mode alike
                elapsed, extra = await run_scenario(sc, mode, t)
                runs[mode].append(elapsed)
                if "urgent" in extra:
                    urgent[mode].append(extra["urgent"])
                if "urgent_bound" in extra:
                    bounds[mode].append(extra["urgent_bound"])
        report(sc, t, runs, urgent, bounds)


def report(
    sc: Scenario,
    t: float,
    runs: dict[str, list[float]],
    urgent: dict[str, list[float]],
    bounds: dict[str, list[float]] | None = None,
) -> None:
    """Per plugin mode: makespan vs the bound and vs stock, and the urgent job's latency
    (against its critical path and, where measured, its no-preemption bound)."""
    med = {m: statistics.median(v) for m, v in runs.items()}
    bound = sc.bound(t)
    raw = {m: [round(x / bound, 2) for x in v] for m, v in runs.items()}
    notes = f"{sc.title}; t={t}s; runs/bound {raw}"
    extra = {f"{m}_ratio": med[m] / bound for m in med}
    u = {m: statistics.median(v) for m, v in urgent.items() if v}
    for mode in (m for m in PLUGIN_MODES if m in med):
        tag = "" if mode == "swarm" else ", share-gpu-threads off"

        def line(measure, ours, peer, peer_name, goal, note, tag=tag) -> None:
            emit(Line(BENCH, measure + tag, ours, peer, peer_name, "s", "lower", goal, note, extra))

        line(
            f"scenario {sc.name}: makespan / lower bound",
            med[mode],
            bound,
            "lower bound",
            1.2,
            notes,
        )
        line(
            f"scenario {sc.name}: makespan vs stock",
            med[mode],
            med["stock"],
            "stock Dask",
            1.0,
            f"hand-set {med.get('hand', float('nan')):.3g}s",
        )
        if sc.urgent is not None and mode in u:
            line(
                f"scenario {sc.name}: urgent job latency / bound",
                u[mode],
                sc.urgent * t,
                "lower bound",
                1.5,
                ", ".join(f"{m} {u[m]:.3g}s" for m in ("stock", "hand") if m in u),
            )
        nb = (bounds or {}).get(mode)
        if sc.urgent is not None and mode in u and nb:
            stock = (bounds or {}).get("stock")
            line(
                f"scenario {sc.name}: urgent job latency / no-preemption bound",
                u[mode],
                statistics.median(nb),
                "no-preemption bound (running tasks finish first)",
                1.5,
                f"stock {u['stock'] / statistics.median(stock):.3g}x its bound"
                if stock and "stock" in u
                else "",
            )


# ---------------------------------------------------------------- memory (#9164)
class PeakMemory(SchedulerPlugin):
    """Bytes of results in memory (each key once), and their peak, from transitions."""

    name = "bench-peak-memory"

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.sizes: dict[Any, int] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            ts = self.scheduler.tasks.get(key)
            self.sizes[key] = n = ts.nbytes if ts is not None else 0
            self.now += n
            self.peak = max(self.peak, self.now)
        elif start == "memory":
            self.now -= self.sizes.pop(key, 0)

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler


def decode(i: int, duration: float) -> Any:
    import numpy as np

    time.sleep(duration)
    return np.full(2**20, i, dtype="float64")  # 8 MiB


def compute_on_gpu(block: Any, duration: float) -> float:
    time.sleep(duration)
    return float(block[0])


async def memory(t: float, n: int) -> None:
    peaks: dict[bool, list[int]] = {False: [], True: []}
    specs = [Spec(2), Spec(2), Spec(2, {"GPU": 1}, "gpu")]
    for _ in range(2):
        for plugin in (False, True):
            async with cluster(specs, plugin) as (c, s, _, _):
                meter = PeakMemory()
                s.add_plugin(meter)
                await meter.start(s)
                blocks = c.map(decode, range(n), duration=t / 2, key=[f"dec-{i}" for i in range(n)])
                out = c.map(
                    compute_on_gpu,
                    blocks,
                    duration=t,
                    resources={"GPU": 1},
                    key=[f"gpu-{i}" for i in range(n)],
                )
                del blocks
                await wait(out)
                peaks[plugin].append(meter.peak)
    ours, stock = min(peaks[True]), min(peaks[False])
    emit(
        Line(
            BENCH,
            "peak worker memory, CPU decode -> GPU pipeline",
            ours / 2**20,
            stock / 2**20,
            "stock Dask",
            "MiB",
            "lower",
            0.5,
            f"{n} decodes of 8 MiB (t/2) feeding {n} GPU tasks (t) on 1 GPU, 6 threads",
        )
    )


# ---------------------------------------------------------------- overhead
# ---------------------------------------------------------------- placement cost
def placement_cost(tasks: int) -> None:
    """Cost per task of deciding and dispatching, 1,000 simulated workers against 10."""

    def per_task(n_workers: int) -> dict[str, float]:
        p = Placer()
        for i in range(n_workers):
            res = {"GPU": 1.0, "GPU_MEMORY": 16e9} if i % 4 == 0 else {}
            p.add_worker(WorkerInfo(f"tcp://10.0.{i // 250}.{i % 250}:8786", 4, res))
        d = Dispatcher(p.workers)
        addrs = list(p.workers)
        out = {}
        for kind, needs in (("gpu", {"GPU": 1.0}), ("cpu", {})):
            req = Requirements(gpu=1) if needs else None
            t0 = time.perf_counter()
            for i in range(tasks):
                p.decide(req)
                d.ready(Job(i, (0, 0, i), needs))
                for key, _ in d.plan(lambda a: 0, addrs[i % len(addrs) : i % len(addrs) + 1]):
                    d.done(key)
            out[kind] = (time.perf_counter() - t0) / tasks
        reqs = [Requirements(chunk=f"arr/c/{i}") for i in range(tasks)]
        for kind in ("chunk-first", "chunk-again"):
            t0 = time.perf_counter()
            for r in reqs:
                p.decide(r)
            out[kind] = (time.perf_counter() - t0) / tasks
        return out

    per_task(10)  # warm up
    runs = [{n: per_task(n) for n in (10, 1000)} for _ in range(3)]
    costs = {n: {k: min(r[n][k] for r in runs) for k in runs[0][n]} for n in (10, 1000)}
    for kind in ("gpu", "cpu", "chunk-again"):
        emit(
            Line(
                BENCH,
                f"placement cost per task, {kind}, 1,000 vs 10 workers",
                costs[1000][kind] * 1e6,
                costs[10][kind] * 1e6,
                "10 workers",
                "us",
                "lower",
                2.0 if kind != "gpu" else 4.0,
            )
        )
    emit(
        Line(
            BENCH,
            "placement cost per task, chunk first seen, 1,000 vs 10 workers",
            costs[1000]["chunk-first"] * 1e6,
            costs[10]["chunk-first"] * 1e6,
            "10 workers",
            "us",
            "lower",
            None,
            "a rendezvous hash over every worker, once per chunk",
        )
    )


# ---------------------------------------------------------------- affinity
def _backing_bytes(dask_worker: Any) -> int:
    """Bytes this worker's cache read from the backing store (S3) so far."""
    plugin = dask_worker.plugins.get("swarmstore-cache")
    stats = plugin.stats() if plugin is not None else {}
    return sum(s["bytes"] for s in stats.get("backing", {}).values())


def affinity(quick: bool) -> None:
    """Two passes over a zarr array on S3 through each worker's TieredStore, 3 workers."""
    import numpy as np
    import zarr
    from distributed import LocalCluster
    from zarr.storage import FsspecStore

    from swarmstore.cache import TieredCachePlugin
    from swarmstore.dataset import affinity_config, open_array
    from swarmstore.testing import moto_server

    n_chunks, chunk = (48 if quick else 192), 32_768  # 256 KiB chunks of float64
    with moto_server(process=True) as s3:
        bucket, opts = s3.make_bucket(), s3.storage_options()
        urls = {False: f"s3://{bucket}/stock", True: f"s3://{bucket}/swarm"}  # cold data each
        for url in urls.values():
            store = FsspecStore.from_url(url, storage_options=opts)
            z = zarr.create_array(store, shape=(n_chunks * chunk,), chunks=(chunk,), dtype="f8")
            z[:] = np.random.default_rng(0).random(n_chunks * chunk)
        results = {}
        with (
            LocalCluster(
                n_workers=3,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                host="127.0.0.1",
            ) as lc,
            Client(lc) as c,
        ):
            c.register_plugin(TieredCachePlugin(memory_bytes="256MiB"))
            for plugin in (False, True):  # stock first, then the same cluster with SwarmPlugin
                if plugin:
                    c.register_plugin(SwarmPlugin())
                passes = []
                for _ in range(2):
                    before = sum(c.run(_backing_bytes).values())
                    with affinity_config():
                        open_array(urls[plugin], storage_options=opts, dask=True).sum().compute()
                    passes.append(sum(c.run(_backing_bytes).values()) - before)
                results[plugin] = passes
    ours, stock = (results[p][1] / results[p][0] for p in (True, False))
    emit(
        Line(
            BENCH,
            "affinity: remote bytes pass 2 / pass 1",
            ours,
            stock,
            "stock Dask",
            "x",
            "lower",
            None,
            f"{n_chunks} chunks of 256 KiB on S3 (moto), 3 workers",
        )
    )
    emit(
        Line(
            BENCH,
            "affinity: remote bytes pass 2 / pass 1, vs 5% budget",
            ours,
            0.05,
            "5% budget",
            "x",
            "lower",
            1.0,
        )
    )


async def amain(args: argparse.Namespace) -> None:
    quick, only = args.quick, set(args.only or ())

    def want(name: str) -> bool:
        return not only or name in only

    if want("scenarios"):
        asked = set(args.modes or MODES) | {"stock"}
        modes = [m for m in MODES if m in asked]
        await scenarios(0.05 if quick else 0.1, 1 if quick else 3, args.scenarios or (), modes)
    if want("memory"):
        await memory(0.05 if quick else 0.1, 30 if quick else 60)
    if want("overhead"):
        await overhead((2_000,) if quick else (10_000, 50_000), 1 if quick else 3)
    if want("placement-cost"):
        placement_cost(500 if quick else 2000)


def main(argv: list[str]) -> int:
    # teardown of in-process clusters logs closed-comm noise (heartbeats in flight)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--scenarios", nargs="*", help="scenario names (default: all)")
    ap.add_argument("--modes", nargs="*", choices=MODES, help="default: all")
    args = ap.parse_args(argv)
    with dask.config.set({"distributed.admin.tick.limit": "60s"}):
        asyncio.run(amain(args))
    if not args.only or "affinity" in args.only:
        affinity(args.quick)
    if not args.only or "kill" in args.only:
        kill(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
