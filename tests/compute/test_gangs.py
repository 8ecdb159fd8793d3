"""Gangs across workers (``swarm={"gpu": 1, "gang": name}``): all members start at once, or none.

Like a Ray placement group: the GPU tasks of one graph submission that name one gang (or,
with ``gang_size=k``, the k live tasks that name it, over several submissions) are
dispatched together, each to a free GPU slot, across workers, only when every member is
ready and every member fits at once; a gang larger than all the GPUs able to run it fails
with :class:`~swarmstore.errors.UnsatisfiableRequirements` after the timeout.
"""

from __future__ import annotations

import dask
import pytest
from distributed import Event, wait
from distributed.utils_test import async_poll_for, gen_cluster

from swarmstore.compute import SwarmPlugin
from swarmstore.compute.dispatch import Dispatcher, Job
from swarmstore.compute.placement import WorkerInfo
from swarmstore.compute.requirements import parse
from swarmstore.errors import PlacementError, UnsatisfiableRequirements

GiB = 2**30
GPU = {"GPU": 1.0}
CPU = ("127.0.0.1", 1)
GPU1 = ("127.0.0.1", 2, {"resources": {"GPU": 1, "GPU_MEMORY": 16e9}})


def member(key: str, gang: object = "g", size: int = 3, order: int = 0) -> Job:
    return Job(key, (0, 0, order), GPU, gang=gang, gang_size=size)


def idle(addr: str) -> int:
    return 0


def test_a_gang_goes_all_at_once_across_workers_or_not_at_all():
    ws = {a: WorkerInfo(a, 2, {"GPU": 2, "GPU_MEMORY": 32 * GiB}) for a in ("w1", "w2")}
    d = Dispatcher(ws, gpu_prefetch=1.0)
    d.ready(member("m0"))
    d.ready(member("m1", order=1))
    assert d.plan(idle, []) == []  # two of three members ready: none goes
    d.ready(Job("solo", (0, 0, 9), GPU))
    d.ready(Job("solo2", (0, 0, 9), GPU))
    assert sorted(a for _, a in d.plan(idle, [])) == ["w1", "w2"]  # solos take free slots
    d.ready(member("m2", order=2))
    assert d.plan(idle, []) == []  # all ready, but two GPUs are free: none goes, no prefetch
    d.done("solo")
    picks = d.plan(idle, [])
    assert sorted(k for k, _ in picks) == ["m0", "m1", "m2"]  # three free GPUs: all at once
    assert {a for _, a in picks} == {"w1", "w2"}  # across workers


def test_gang_annotations_are_validated():
    assert parse({"gpu": 1, "gang": "step-7"}).gang == "step-7"
    with pytest.raises(PlacementError, match="need GPUs"):
        parse({"gang": "step-7"})
    with pytest.raises(PlacementError, match="non-empty string"):
        parse({"gpu": 1, "gang": 7})
    with pytest.raises(PlacementError, match="with gang=name"):
        parse({"gpu": 1, "gang_size": 2})
    with pytest.raises(PlacementError, match="integer >= 1"):
        parse({"gpu": 1, "gang": "g", "gang_size": 0})


def state(s, key: str) -> str | None:
    ts = s.tasks.get(key)
    return None if ts is None else ts.state


def gated(ev: Event) -> str:
    from distributed import get_worker

    ev.wait()
    return get_worker().address


@gen_cluster(client=True, nthreads=[CPU, GPU1, GPU1])
async def test_no_member_starts_while_one_gpu_is_taken(c, s, a, g1, g2):
    await c.register_plugin(SwarmPlugin(extensions=()))
    hold, go = Event(), Event()
    with dask.annotate(swarm={"gpu": 1}):
        blocker = c.submit(gated, hold, key="blocker")
    await async_poll_for(lambda: state(s, "blocker") == "processing", timeout=30)
    with dask.annotate(swarm={"gpu": 1, "gang": "ranks", "gang_size": 2}):  # 2 submissions
        ranks = [c.submit(gated, go, key=f"rank-{i}") for i in range(2)]
    await async_poll_for(lambda: all(state(s, f.key) == "no-worker" for f in ranks), 30)
    # one GPU is free, but the gang needs two at once: it waits whole
    assert not any(s.tasks[f.key].processing_on for f in ranks)
    await hold.set()
    assert await blocker in {g1.address, g2.address}
    await async_poll_for(lambda: all(state(s, f.key) == "processing" for f in ranks), 30)
    await go.set()
    assert set(await c.gather(ranks)) == {g1.address, g2.address}  # one rank per GPU


@gen_cluster(client=True, nthreads=[CPU, GPU1, GPU1])
async def test_a_gang_larger_than_the_cluster_fails_with_a_clear_error(c, s, a, g1, g2):
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="200ms"))
    with dask.annotate(swarm={"gpu": 1, "gang": "too-big"}):
        ranks = c.map(lambda i: i, range(3), key=[f"rank-{i}" for i in range(3)])
    await wait(ranks)
    for f in ranks:
        with pytest.raises(UnsatisfiableRequirements, match="gang of 3 tasks needs 3 GPUs"):
            await f
    # a gang that fits still runs
    with dask.annotate(swarm={"gpu": 1, "gang": "fits"}):
        ok = c.map(lambda i: i, range(2), key=[f"ok-{i}" for i in range(2)])
    assert await c.gather(ok) == [0, 1]
