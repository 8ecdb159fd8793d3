"""Mixed GPU/CPU scenarios for ``bench_compute.py``: workloads, worker sets, lower bounds.

Tasks sleep (``t`` seconds a unit), so the machine's load matters little; GPU workers declare
``GPU`` (and ``GPU_MEMORY``) resources. Each scenario runs in three modes on a fresh
in-process cluster: ``stock`` (plain Dask, ``resources=`` only where a task needs a GPU),
``hand`` (the same plus what a careful user sets by hand: CPU tasks restricted to CPU
workers, big GPU tasks to the big GPU, priorities) and ``swarm`` (stock annotations plus
``SwarmPlugin``). The lower bound of each is computed from its work: the largest of total
work over all threads, GPU work over GPU slots (per GPU class when only some GPUs fit),
and the critical path after the last arrival; with joins and leaves, capacity is integrated
over time.

Scenarios a-f follow the table of issue 19; g and h are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Scheduler, Worker, wait

from swarmstore.compute import SwarmPlugin

GiB = 2**30


#: thread id -> (perf_counter at start, duration) of each ``work`` task running now (the
#: workers are in this process): what a no-preemption bound needs at an urgent job's arrival
_busy: dict[int, tuple[float, float]] = {}


def work(duration: float, *deps: Any) -> int:
    me = threading.get_ident()
    _busy[me] = (time.perf_counter(), duration)
    try:
        time.sleep(duration)
    finally:
        _busy.pop(me, None)
    return 0


def no_preemption_bound(threads: int, jobs: int, length: float) -> float:
    """The least time, from now, in which ``jobs`` chains of ``length`` seconds finish on
    ``threads`` threads that first finish the ``work`` tasks running on them now (Dask
    never preempts a running task): each chain on the thread free earliest, which is
    optimal for chains of equal length."""
    now = time.perf_counter()
    free = sorted(max(0.0, start + d - now) for start, d in list(_busy.values()))
    free = [0.0] * max(0, threads - len(free)) + free[:threads]
    for _ in range(jobs):
        free[0] += length
        free.sort()
    return max(free[-1], length) if jobs else 0.0


_failed_once: set[str] = set()
_lock = threading.Lock()


def flaky(duration: float, tag: str, always: bool, *deps: Any) -> int:
    """Sleep, then fail the first time for ``tag`` (every time with ``always``)."""
    time.sleep(duration)
    with _lock:
        first = tag not in _failed_once
        _failed_once.add(tag)
    if always or first:
        raise RuntimeError(f"{tag} failed")
    return 0


@dataclass
class Spec:
    """One worker: threads, resources, role (``cpu``/``gpu``/``big``)."""

    nthreads: int
    resources: dict[str, float] = field(default_factory=dict)
    role: str = "cpu"


def gpu(nthreads: int = 1, mem: float = 16 * GiB, role: str = "gpu") -> Spec:
    return Spec(nthreads, {"GPU": 1, "GPU_MEMORY": mem}, role)


@dataclass
class Ctx:
    """What a workload needs to know about its cluster."""

    c: Client
    t: float
    mode: str
    roles: dict[str, list[str]]  # role -> addresses
    add_worker: Callable[[Spec], Awaitable[str]]
    extra: dict[str, float] = field(default_factory=dict)

    def cpu_only(self) -> dict[str, Any]:
        """What ``hand`` mode adds to CPU tasks: stay on CPU workers."""
        return {"workers": self.roles["cpu"]} if self.mode == "hand" else {}


@contextlib.asynccontextmanager
async def cluster(specs: Sequence[Spec], plugin: bool | dict[str, Any]):
    """An in-process scheduler and workers; yields (client, scheduler, roles, add_worker)."""
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as s:
        workers: list[Worker] = []
        roles: dict[str, list[str]] = {"cpu": [], "gpu": [], "big": []}

        async def add(spec: Spec) -> str:
            w = Worker(
                s.address,
                nthreads=spec.nthreads,
                resources=spec.resources or None,
                host="127.0.0.1",
            )
            await w
            workers.append(w)
            roles[spec.role].append(w.address)
            return w.address

        for spec in specs:
            await add(spec)
        try:
            async with Client(s.address, asynchronous=True) as c:
                if plugin is not False:
                    await c.register_plugin(
                        SwarmPlugin(**(plugin if isinstance(plugin, dict) else {}))
                    )
                yield c, s, roles, add
        finally:
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


_names = itertools.count()


def keys(prefix: str, n: int) -> list[str]:
    tag = next(_names)
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


GPU1 = {"GPU": 1}


# --------------------------------------------------------------------------- a. urgent
async def run_a(x: Ctx) -> None:
    c, t = x.c, x.t
    flood = c.map(work, [3 * t] * 80, key=keys("flood", 80), **x.cpu_only())
    pre = c.map(work, [t] * 20, key=keys("pre", 20), **x.cpu_only())
    mid = c.map(work, [2 * t] * 20, pre, key=keys("gpu", 20), resources=GPU1)
    post = c.map(work, [t] * 20, mid, key=keys("post", 20), **x.cpu_only())
    await asyncio.sleep(10 * t)
    t0 = time.perf_counter()
    upre = c.map(work, [t] * 4, key=keys("upre", 4), priority=10, **x.cpu_only())
    umid = c.map(work, [2 * t] * 4, upre, key=keys("ugpu", 4), resources=GPU1, priority=10)
    upost = c.map(work, [t] * 4, umid, key=keys("upost", 4), priority=10, **x.cpu_only())
    await wait(upost)
    x.extra["urgent"] = time.perf_counter() - t0
    await wait([*flood, *post])


def bound_a(t: float) -> float:
    return max((80 * 3 + 24 * 4) * t / 8, 24 * 2 * t / 2, (10 + 6) * t)


# --------------------------------------------------------------------------- b. GPU fit
async def run_b(x: Ctx) -> None:
    c, t = x.c, x.t
    big = {"GPU": 1, "GPU_MEMORY": 40 * GiB}
    small = {"GPU": 1, "GPU_MEMORY": 8 * GiB}
    hand = {"workers": x.roles["gpu"]} if x.mode == "hand" else {}
    train = c.map(work, [t] * 40, key=keys("train", 40), resources=big, priority=10)
    infer = c.map(work, [t] * 40, key=keys("infer", 40), resources=small, **hand)
    cpu = c.map(work, [2 * t] * 40, key=keys("cpu", 40), **x.cpu_only())
    await wait([*train, *infer, *cpu])


def bound_b(t: float) -> float:
    # train only on the big GPU; all GPU work over 3 GPUs; all work over all 7 threads
    return max(40 * t, (40 + 40) * t / 3, (40 + 40 + 80) * t / 7)


# --------------------------------------------------------------------------- c. burst
async def run_c(x: Ctx) -> None:
    c, t = x.c, x.t
    flood = c.map(work, [4 * t] * 60, key=keys("long", 60), **x.cpu_only())
    await asyncio.sleep(10 * t)
    g = c.map(work, [t] * 10, key=keys("burst", 10), resources=GPU1)
    post = c.map(work, [t] * 10, g, key=keys("after", 10), **x.cpu_only())
    await wait([*flood, *post])


def bound_c(t: float) -> float:
    return max((240 + 20) * t / 12, (10 + 10 + 1) * t)


# --------------------------------------------------------------------------- d. heterogeneous
async def run_d(x: Ctx) -> None:
    c, t = x.c, x.t
    sizes = [(1 + i % 3) * t for i in range(120)]
    loads = c.map(work, sizes, key=keys("load", 120), **x.cpu_only())
    g = [
        c.submit(work, 2 * t, *loads[4 * i : 4 * i + 4], key=k, resources=GPU1)
        for i, k in enumerate(keys("gpu", 30))
    ]
    post = c.map(work, [t] * 30, g, key=keys("post", 30), **x.cpu_only())
    final = c.submit(work, t, *post, key=keys("reduce", 1)[0], **x.cpu_only())
    await wait(final)


def bound_d(t: float) -> float:
    # all work over all 9 threads; GPU work over 2 GPUs after the first loads, then the tail
    return max((240 + 60 + 30 + 1) * t / 9, (1 + 60 / 2 + 1 + 1) * t)


# --------------------------------------------------------------------------- e. joins, leaves
async def run_e(x: Ctx) -> None:
    c, t = x.c, x.t
    pre = c.map(work, [t] * 30, key=keys("pre", 30), **x.cpu_only())
    g = c.map(work, [2 * t] * 30, pre, key=keys("gpu", 30), resources=GPU1)
    cpu = c.map(work, [2 * t] * 30, key=keys("cpu", 30), **x.cpu_only())
    await asyncio.sleep(10 * t)
    x.roles["cpu"].append(await x.add_worker(Spec(2)))
    await x.add_worker(gpu())
    await asyncio.sleep(10 * t)
    await c.retire_workers([x.roles["gpu"][0]])
    await wait([*g, *cpu])


def bound_e(t: float) -> float:
    gpu_done = 20 + (60 - 50) / 2  # 2 GPUs for 10t, 3 for 10t, then 2
    all_done = 20 + (150 - 110) / 6  # 4 threads, then 7, then 6
    return max(gpu_done, all_done) * t


# --------------------------------------------------------------------------- f. retries
async def run_f(x: Ctx) -> None:
    c, t = x.c, x.t
    pre = c.map(work, [t] * 20, key=keys("pre", 20), **x.cpu_only())
    gk = keys("gpu", 20)
    g = [
        c.submit(flaky, 2 * t, k, False, p, key=k, resources=GPU1, retries=1)
        if i % 3 == 0
        else c.submit(work, 2 * t, p, key=k, resources=GPU1)
        for i, (k, p) in enumerate(zip(gk, pre, strict=True))
    ]
    post = c.map(work, [t] * 20, g, key=keys("post", 20), **x.cpu_only())
    bad = keys("doomed", 1)[0]
    doomed = c.submit(flaky, 2 * t, bad, True, key=bad, resources=GPU1, retries=1)
    await wait([*post, doomed])
    assert doomed.status == "error"


def bound_f(t: float) -> float:
    gpu_work = 20 * 2 + 7 * 2 + 2 * 2
    return max((20 + 20 + gpu_work) * t / 6, (1 + gpu_work / 2 + 1) * t)


# --------------------------------------------------------------------------- g. fractional GPUs
async def run_g(x: Ctx) -> None:
    c, t = x.c, x.t
    half = {"GPU": 0.5, "GPU_MEMORY": 6 * GiB}
    g = c.map(work, [2 * t] * 40, key=keys("half", 40), resources=half)
    cpu = c.map(work, [t] * 20, key=keys("cpu", 20), **x.cpu_only())
    await wait([*g, *cpu])


def bound_g(t: float) -> float:
    return max(40 * 2 * 0.5 * t / 2, (80 + 20) * t / 6)


# --------------------------------------------------------------------------- h. CPU-only urgent
async def run_h(x: Ctx) -> None:
    c, t = x.c, x.t
    flood = c.map(work, [2 * t] * 60, key=keys("flood", 60))
    await asyncio.sleep(5 * t)
    x.extra["urgent_bound"] = no_preemption_bound(6, 6, 2 * t)
    t0 = time.perf_counter()
    first = c.map(work, [t] * 6, key=keys("u1", 6), priority=10)
    second = c.map(work, [t] * 6, first, key=keys("u2", 6), priority=10)
    await wait(second)
    x.extra["urgent"] = time.perf_counter() - t0
    await wait(flood)


def bound_h(t: float) -> float:
    return max((120 + 12) * t / 6, (5 + 2) * t)


@dataclass
class Scenario:
    name: str
    title: str
    workers: list[Spec]
    run: Callable[[Ctx], Awaitable[None]]
    bound: Callable[[float], float]
    #: bound of the urgent job's latency, in units of t (scenarios with an urgent job)
    urgent: float | None = None


SCENARIOS = [
    Scenario(
        "a",
        "CPU flood + CPU->GPU->CPU pipelines, urgent job at 10t",
        [Spec(2), Spec(2), gpu(2), gpu(2)],
        run_a,
        bound_a,
        urgent=6,
    ),
    Scenario(
        "b",
        "train needs 40 GiB (one 80 GiB GPU), infer 8 GiB, CPU work",
        [gpu(2, 80 * GiB, "big"), gpu(2), gpu(2), Spec(1)],
        run_b,
        bound_b,
    ),
    Scenario(
        "c",
        "long CPU tasks flood every thread; a GPU->CPU burst at 10t",
        [Spec(4), Spec(4), gpu(4)],
        run_c,
        bound_c,
    ),
    Scenario(
        "d",
        "CPU workers of 1, 2, 4 threads, two 1-thread GPU workers; loads, GPU, reduce",
        [Spec(1), Spec(2), Spec(4), gpu(1), gpu(1)],
        run_d,
        bound_d,
    ),
    Scenario(
        "e",
        "pipelines + CPU work; a CPU and a GPU worker join at 10t, a GPU retires at 20t",
        [Spec(2), gpu(1), gpu(1)],
        run_e,
        bound_e,
    ),
    Scenario(
        "f",
        "pipelines with retries (every third GPU task fails once), one fails for good",
        [Spec(2), Spec(2), gpu(1), gpu(1)],
        run_f,
        bound_f,
    ),
    Scenario(
        "g", "fractional GPUs (0.5 each) beside CPU work", [Spec(2), gpu(2), gpu(2)], run_g, bound_g
    ),
    Scenario(
        "h",
        "CPU-only cluster: flood, then an urgent two-stage job",
        [Spec(2), Spec(2), Spec(2)],
        run_h,
        bound_h,
        urgent=2,
    ),
]
