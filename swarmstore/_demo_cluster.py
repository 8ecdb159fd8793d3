"""Demo sections that need a Dask cluster: placement, cache affinity, a worker killed.

One cluster of real processes serves all three: two CPU workers and one worker declared as
a GPU worker (``resources={"GPU": 1, ...}``), each behind a nanny so a kill -9 is a real
process death, with SwarmPlugin on the scheduler and TieredCachePlugin on the workers.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import SchedulerPlugin

from swarmstore._demo_context import close_session

if TYPE_CHECKING:
    from swarmstore._demo_context import Demo


__all__ = ["cluster_sections"]


def _prep(i: int) -> int:
    time.sleep(0.05)
    return i


def _background(i: int) -> tuple[str, float, float]:
    """A CPU task: where it ran, and when (one host, so one clock)."""
    from distributed import get_worker

    t0 = time.time()
    time.sleep(0.1)
    return str(get_worker().name), t0, time.time()


def _train(x: int) -> tuple[int, str, float, float]:
    from distributed import get_worker

    t0 = time.time()
    time.sleep(0.1)
    return x * x, get_worker().name, t0, time.time()


def _most_at_once(spans: list[tuple[float, float]], window: tuple[float, float]) -> int:
    """The most ``spans`` that overlap at one instant inside ``window``."""
    lo, hi = window
    edges = sorted(  # at a tie an end (-1) comes before a start
        (t, d)
        for a, b in spans
        if a < hi and b > lo
        for t, d in ((max(a, lo), 1), (min(b, hi), -1))
    )
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def _part(i: int) -> np.ndarray:
    time.sleep(0.15)
    return np.full(1000, i, dtype="i8")


def _total(*parts: np.ndarray) -> int:
    return int(sum(int(p.sum()) for p in parts))


class _Recomputed(SchedulerPlugin):
    """Scheduler plugin counting processing -> memory transitions per key."""

    name = "swarmstore-demo-counter"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory":
            self.counts[str(key)] += 1


def _start_cluster(demo: Demo) -> tuple[Any, Any]:
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from swarmstore.cache import TieredCachePlugin
    from swarmstore.compute import SwarmPlugin

    def worker(name: str, resources: dict[str, float] | None = None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "nthreads": 2,
            "name": name,
            "memory_limit": "2GiB",
            "host": "127.0.0.1",
            "dashboard_address": ":0",
            "silence_logs": logging.ERROR,
        }
        if resources:
            options["resources"] = resources
        return {"cls": Nanny, "options": options}

    cluster = SpecCluster(
        scheduler={
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        },
        workers={
            "cpu-0": worker("cpu-0"),
            "cpu-1": worker("cpu-1"),
            "gpu-0": worker("gpu-0", {"GPU": 1, "GPU_MEMORY": 16e9}),
        },
        silence_logs=40,
    )
    client = Client(cluster)
    client.wait_for_workers(3, timeout=60)
    client.register_plugin(SwarmPlugin())
    client.register_plugin(
        TieredCachePlugin(
            memory_bytes="256MiB", disk_dir=str(demo.root / "cache"), disk_bytes="1GiB"
        )
    )
    return cluster, client


def compute_section(demo: Demo, client: Any) -> None:
    """Mixed GPU/CPU work: GPU tasks on the GPU worker, CPU work only in its spare thread."""
    from swarmstore.compute import annotate

    demo.section = "compute"
    demo.console.rule("[bold]2. Compute: SwarmPlugin places GPU and CPU work")
    t0 = time.perf_counter()
    background = client.map(_background, range(24), key=[f"bg-{i}" for i in range(24)])
    preps = client.map(_prep, range(8), key=[f"prep-{i}" for i in range(8)])
    with annotate(gpu=1, priority="high"):
        trained = [client.submit(_train, p, key=f"train-{i}") for i, p in enumerate(preps)]
    results = client.gather(trained)
    cpu = client.gather(background)
    makespan = time.perf_counter() - t0
    gpu_workers = {w for _, w, _, _ in results}
    demo.check(
        "every GPU task ran on the GPU worker", gpu_workers == {"gpu-0"}, f"{len(results)} tasks"
    )
    # The GPU worker has 2 threads and 1 GPU: while GPU work runs, CPU work may use only the
    # thread the GPU task does not need, so a GPU task never waits for a thread behind it
    window = (min(r[2] for r in results), max(r[3] for r in results))
    on_gpu = [(a, b) for w, a, b in cpu if w == "gpu-0"]
    most = _most_at_once(on_gpu, window)
    demo.check(
        "CPU tasks on the GPU worker used only its spare thread while GPU work ran",
        most <= 1,
        f"at most {most} at once; {len(on_gpu)} of {len(cpu)} CPU tasks on the GPU worker; "
        f"makespan {makespan:.2f} s",
    )
    demo.check("results are right", [r for r, *_ in results] == [i * i for i in range(8)])
    client.cancel(background + preps + trained)


def cache_section(demo: Demo, client: Any) -> None:
    """Two passes over a zarr array on S3: the second is served from the workers' caches."""
    import zarr
    from zarr.storage import FsspecStore

    from swarmstore.dataset import affinity_config, open_array

    demo.section = "cache"
    demo.console.rule("[bold]3. Memory: tiered cache + chunk affinity, second pass from cache")
    bucket = demo.s3.make_bucket("swarm-demo-cache")
    backing = FsspecStore(demo.s3.filesystem(asynchronous=True), path=f"{bucket}/field")
    data = np.random.default_rng(7).random((1024, 1024), dtype="f4")
    arr = zarr.create_array(backing, shape=data.shape, chunks=(128, 128), dtype="f4")
    arr[:] = data

    def remote_bytes() -> int:
        stats = client.run(lambda dask_worker: dask_worker.plugins["swarmstore-cache"].stats())
        return sum(b["bytes"] for s in stats.values() for b in s.get("backing", {}).values())

    passes = []
    with affinity_config():
        lazy = open_array(backing, dask=True)
        for _ in range(2):
            before, t0 = remote_bytes(), time.perf_counter()
            total = float(lazy.sum().compute())
            passes.append((remote_bytes() - before, time.perf_counter() - t0))
    demo.check("the sum is right", abs(total - float(data.sum(dtype="f8"))) < 1e-2 * data.size)
    (b1, t1), (b2, t2) = passes
    demo.say(
        f"pass 1 read {b1 / 2**20:.1f} MiB from S3 in {t1:.2f} s; "
        f"pass 2 read {b2 / 2**20:.2f} MiB in {t2:.2f} s"
    )
    demo.check(
        "pass 2 reads <= 5% of pass 1's bytes from S3",
        b1 > 0 and b2 <= 0.05 * b1,
        f"{b2 / max(b1, 1):.1%}",
    )
    close_session(backing.fs)


def kill_section(demo: Demo, client: Any, cluster: Any) -> None:
    """Critical results kept at 2 copies: kill -9 a worker, nothing is recomputed."""
    from distributed import wait

    from swarmstore.compute import annotate

    demo.section = "replication"
    demo.console.rule("[bold]4. Compute: critical results survive a kill -9")
    scheduler = cluster.scheduler
    counter = _Recomputed()
    scheduler.add_plugin(counter, name=counter.name)
    keys = [f"critical-part-{i}" for i in range(12)]
    with annotate(critical=True, replicas=2):
        parts = [client.submit(_part, i, key=k) for i, k in enumerate(keys)]
    wait(parts)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(len(scheduler.tasks[k].who_has or ()) >= 2 for k in keys):
            break
        time.sleep(0.05)
    copies = [len(scheduler.tasks[k].who_has or ()) for k in keys]
    demo.check(
        "every critical result holds 2 copies", min(copies) >= 2, f"copies {sorted(set(copies))}"
    )
    pids = client.run(os.getpid)
    victim = next(ws.address for ws in scheduler.workers.values() if ws.name == "cpu-0")
    held = sum(any(w.address == victim for w in scheduler.tasks[k].who_has) for k in keys)
    os.kill(pids[victim], signal.SIGKILL)
    demo.say(f"kill -9 of cpu-0 (pid {pids[victim]}), which held {held} of the {len(keys)} results")
    # the total is submitted once the scheduler knows cpu-0 is gone: sent earlier, a worker
    # could still try to fetch a part from the dead one (Dask logs that as an ERROR and
    # retries elsewhere; the demo's output should show only its own story)
    deadline = time.monotonic() + 30
    while victim in scheduler.workers and time.monotonic() < deadline:
        time.sleep(0.05)
    result = client.submit(_total, *parts, key="critical-total").result(timeout=60)
    recomputed = sum(counter.counts[k] - 1 for k in keys)
    demo.check("the total is right", result == sum(i * 1000 for i in range(12)))
    demo.check("0 critical results recomputed", recomputed == 0, f"{recomputed} recomputed")
    client.cancel(parts)


def cluster_sections(demo: Demo) -> None:
    """Run the cluster sections on one cluster, then close it."""
    cluster, client = _start_cluster(demo)
    try:
        for section in (compute_section, cache_section):
            try:
                section(demo, client)
            except Exception as e:
                demo.check(f"{section.__name__} ran to the end", False, repr(e))
        kill_section(demo, client, cluster)
    finally:
        client.close()
        cluster.close()
