"""Compute benchmarks: SwarmPlugin against stock Dask, both measured in the same run.

Usage: ``python benchmarks/bench_compute.py [--quick] [--only NAME ...]``

Measures (one line each, ``<measure>: <ratio>x (goal ...)``):

- ``throughput``: 10,000 trivial tasks, SwarmPlugin throughput / stock throughput.
- ``makespan-a/b/c``: mixed GPU/CPU workloads (sleeps stand in for compute, GPU workers
  declared with ``resources={"GPU": 1}``), makespan / lower bound, SwarmPlugin and stock:
  (a) 240 background CPU tasks submitted first, then 30 CPU->GPU pipelines; 2 CPU workers +
  1 GPU worker, 2 threads each. (b) 120 CPU tasks and 30 GPU tasks; 1 CPU worker (2 threads) +
  1 GPU worker (4 threads). (c) 120 GPU tasks over 2 GPU workers with 4 threads each.
  The lower bound is the largest of: GPU work / GPU slots, all work / all threads, CPU work /
  threads not held by GPU work, and the critical path.
- ``placement-cost``: the Placer's cost per task with 1,000 simulated workers / with 10.
- ``affinity``: two passes over a zarr array on S3 (moto) through TieredStore on 3 workers,
  remote bytes on pass 2 / pass 1 (needs ``swarmstore.dataset``; skipped until it exists).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import dask
from distributed import Client, Scheduler, Worker

from swarmstore.compute import SwarmPlugin
from swarmstore.compute.placement import Placer, WorkerInfo
from swarmstore.compute.requirements import Requirements

GPU = {"GPU": 1}


def work(duration: float, *deps: Any) -> int:
    time.sleep(duration)
    return 0


def inc(x: int) -> int:
    return x + 1


@contextlib.asynccontextmanager
async def cluster(specs: Sequence[tuple[int, dict[str, float]]], plugin: bool):
    """An in-process scheduler and workers (nthreads, resources); yields a client."""
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as s:
        workers = [
            Worker(s.address, nthreads=n, resources=res or None, host="127.0.0.1")
            for n, res in specs
        ]
        await asyncio.gather(*workers)
        try:
            async with Client(s.address, asynchronous=True) as c:
                if plugin:
                    await c.register_plugin(SwarmPlugin())
                yield c
        finally:
            await asyncio.gather(*(w.close() for w in workers))


# ---------------------------------------------------------------- throughput
async def throughput(n: int, reps: int) -> None:
    specs = [(2, {}), (2, {})]
    best = {False: 0.0, True: 0.0}
    async with cluster(specs, False) as stock, cluster(specs, True) as swarm:
        for rep in range(reps):
            for plugin, c in ((False, stock), (True, swarm)):
                t0 = time.perf_counter()
                futs = c.map(inc, range(rep * n, (rep + 1) * n))
                await c.gather(futs)
                rate = n / (time.perf_counter() - t0)
                best[plugin] = max(best[plugin], rate)
                del futs
    ratio = best[True] / best[False]
    print(f"throughput: {ratio:.2f}x (goal >= 0.95)")
    print(
        f"  raw: {n} trivial tasks, best of {reps}: stock {best[False]:.0f} tasks/s, "
        f"swarm {best[True]:.0f} tasks/s"
    )


# ---------------------------------------------------------------- makespan scenarios
async def scenario_a(c: Client, t: float) -> float:
    t0 = time.perf_counter()
    bg = c.map(work, [t] * 240, key=[f"bg-{i}" for i in range(240)])
    # background first, as on a shared cluster: a later graph generation than the pipelines
    # (Dask starts a new generation after distributed.scheduler fifo-timeout, 60ms)
    await asyncio.sleep(0.2)
    offset = time.perf_counter() - t0
    feed = c.map(work, [t] * 30, key=[f"feed-{i}" for i in range(30)])
    gpu = c.map(work, [2 * t] * 30, feed, key=[f"gpu-{i}" for i in range(30)], resources=GPU)
    await c.gather([*bg, *gpu])
    return offset  # the pipelines cannot start before they exist


async def scenario_b(c: Client, t: float) -> float:
    cpu = c.map(work, [t] * 120, key=[f"cpu-{i}" for i in range(120)])
    gpu = c.map(work, [t] * 30, key=[f"gpu-{i}" for i in range(30)], resources=GPU)
    await c.gather([*cpu, *gpu])
    return 0.0


async def scenario_c(c: Client, t: float) -> float:
    gpu = c.map(work, [t] * 120, key=[f"gpu-{i}" for i in range(120)], resources=GPU)
    await c.gather(gpu)
    return 0.0


def scenarios(t: float) -> dict[str, tuple[Any, list[tuple[int, dict]], Any]]:
    """name -> (workload, worker specs, lower bound as a function of the workload's offset).

    A workload returns when its last part was submitted (its offset); work submitted then
    cannot finish before offset + its critical path.
    """
    return {
        "a": (
            scenario_a,
            [(2, {}), (2, {}), (2, GPU)],
            # CPU 240t + 30t, GPU 30*2t on 1 slot after the pipelines' first feeder, 6 threads
            lambda off: max(off + t + 60 * t, (270 * t + 60 * t) / 6),
        ),
        "b": (
            scenario_b,
            [(2, {}), (4, GPU)],
            # CPU 120t, GPU 30t on 1 slot, 6 threads
            lambda off: max(30 * t, (120 * t + 30 * t) / 6, t),
        ),
        "c": (
            scenario_c,
            [(4, GPU), (4, GPU)],
            lambda off: max(120 * t / 2, 120 * t / 8, t),
        ),
    }


async def makespan(name: str, t: float, reps: int) -> None:
    fn, specs, lower = scenarios(t)[name]
    out: dict[bool, list[float]] = {False: [], True: []}
    bounds = []
    for _ in range(reps):
        for plugin in (False, True):
            async with cluster(specs, plugin) as c:
                t0 = time.perf_counter()
                offset = await fn(c, t)
                elapsed = time.perf_counter() - t0
                out[plugin].append(elapsed / lower(offset))
                bounds.append(lower(offset))
    stock = statistics.median(out[False])
    swarm = statistics.median(out[True])
    print(f"makespan-{name}: {swarm:.2f}x (goal <= 1.15)")
    print(
        f"  raw: lower bound {statistics.median(bounds):.2f}s; swarm {swarm:.2f}x, "
        f"stock {stock:.2f}x of it (median of {reps}; stock beside: "
        f"{', '.join(f'{x:.2f}' for x in out[False])})"
    )


# ---------------------------------------------------------------- placement cost
def placement_cost(tasks: int) -> None:
    def per_task(n_workers: int) -> dict[str, float]:
        p = Placer()
        for i in range(n_workers):
            gpu = i % 4 == 0
            res = {"GPU": 1.0, "GPU_MEMORY": 16e9} if gpu else {}
            p.add_worker(WorkerInfo(f"tcp://10.0.{i // 250}.{i % 250}:8786", 4, res))
        out = {}
        req = Requirements(gpu=1)
        t0 = time.perf_counter()
        for _ in range(tasks):
            p.decide(req)
            addr = p.dispatch({"GPU": 1.0})
            if addr is not None:
                p.gpu.release(addr, {"GPU": 1.0})
        out["gpu"] = (time.perf_counter() - t0) / tasks
        t0 = time.perf_counter()
        for _ in range(tasks):
            p.decide(None, rootish=False)
        out["cpu"] = (time.perf_counter() - t0) / tasks
        reqs = [Requirements(chunk=f"arr/c/{i}") for i in range(tasks)]
        t0 = time.perf_counter()
        for r in reqs:
            p.decide(r)
        out["chunk-first"] = (time.perf_counter() - t0) / tasks
        t0 = time.perf_counter()
        for r in reqs:
            p.decide(r)
        out["chunk-again"] = (time.perf_counter() - t0) / tasks
        return out

    per_task(10)  # warm up
    runs = [{n: per_task(n) for n in (10, 100, 1000)} for _ in range(3)]
    costs = {n: {k: min(r[n][k] for r in runs) for k in runs[0][n]} for n in (10, 100, 1000)}
    for kind in ("gpu", "cpu", "chunk-again", "chunk-first"):
        ratio = costs[1000][kind] / costs[10][kind]
        print(f"placement-cost-{kind}: {ratio:.2f}x (goal <= 2.0)")
    print(
        "  raw (us per task at 10/100/1000 workers, best of 3; chunk-first is a rendezvous "
        "hash over every worker, once per chunk per membership): "
        + "; ".join(
            f"{k} " + "/".join(f"{costs[n][k] * 1e6:.1f}" for n in (10, 100, 1000))
            for k in ("gpu", "cpu", "chunk-again", "chunk-first")
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

    n_chunks = 48 if quick else 192
    chunk = 32_768  # float64 values: 256 KiB per chunk
    with moto_server(process=True) as s3:
        bucket = s3.make_bucket()
        opts = s3.storage_options()
        rng = np.random.default_rng(0)
        urls = {False: f"s3://{bucket}/stock", True: f"s3://{bucket}/swarm"}  # cold data each
        for url in urls.values():
            store = FsspecStore.from_url(url, storage_options=opts)
            z = zarr.create_array(store, shape=(n_chunks * chunk,), chunks=(chunk,), dtype="f8")
            z[:] = rng.random(n_chunks * chunk)
        results = {}
        with (
            LocalCluster(
                n_workers=3,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                host="127.0.0.1",
            ) as cluster,
            Client(cluster) as c,
        ):
            c.register_plugin(TieredCachePlugin(memory_bytes="256MiB"))
            for plugin in (False, True):  # stock first, then the same cluster with SwarmPlugin
                if plugin:
                    c.register_plugin(SwarmPlugin())
                passes = []
                for _ in range(2):
                    before = sum(c.run(_backing_bytes).values())
                    with affinity_config():
                        x = open_array(urls[plugin], storage_options=opts, dask=True)
                        x.sum().compute()
                    passes.append(sum(c.run(_backing_bytes).values()) - before)
                results[plugin] = passes
    swarm = results[True][1] / results[True][0]
    stock = results[False][1] / results[False][0]
    print(f"affinity-remote-bytes-pass2: {swarm:.3f}x (goal <= 0.05)")
    print(
        f"  raw: {n_chunks} chunks of {chunk * 8 // 1024} KiB on S3 (moto), 3 workers; remote "
        f"bytes pass 1 / pass 2: swarm {results[True][0]} / {results[True][1]}, "
        f"stock {results[False][0]} / {results[False][1]} ({stock:.3f}x)"
    )


async def amain(args: argparse.Namespace) -> None:
    quick = args.quick
    only = set(args.only or ())

    def want(name: str) -> bool:
        return not only or name in only

    if want("throughput"):
        await throughput(1_000 if quick else 10_000, 1 if quick else 3)
    t = 0.05 if quick else 0.1
    for name in ("a", "b", "c"):
        if want(f"makespan-{name}"):
            await makespan(name, t, 1 if quick else 3)
    if want("placement-cost"):
        placement_cost(500 if quick else 2000)


def main(argv: list[str]) -> int:
    # teardown of in-process clusters logs closed-comm noise (heartbeats in flight)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args(argv)
    with dask.config.set({"distributed.admin.tick.limit": "60s"}):
        asyncio.run(amain(args))
    if not args.only or "affinity" in args.only:
        affinity(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
