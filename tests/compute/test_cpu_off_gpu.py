"""CPU-only work stays off the threads GPU workers need (or off them) while a CPU worker runs.

Real in-process clusters: 2 CPU workers and 1 worker declaring a GPU, as ``swarmstore demo``
builds them. Unannotated tasks, a root-ish ``client.map`` batch among them (stock
Dask would queue it and hand it to any worker with a free thread, without ``decide_worker``),
never run on the GPU worker with ``share_gpu_threads=False``, before, during and after GPU work.
By default (``share_gpu_threads=True``) the GPU worker lends CPU work its threads beyond one
per GPU while GPU work is outstanding (every thread while none is). With the GPU worker
alone CPU tasks run there, feeders of GPU tasks included, even on a single thread.
"""

from __future__ import annotations

import dask
from distributed import Event, wait
from distributed.utils_test import async_poll_for, gen_cluster

from swarmstore.compute import SwarmPlugin

CPU = ("127.0.0.1", 2)
GPU1 = ("127.0.0.1", 2, {"resources": {"GPU": 1, "GPU_MEMORY": 16e9}})
GPU1_ONE_THREAD = ("127.0.0.1", 1, {"resources": {"GPU": 1, "GPU_MEMORY": 16e9}})


def where(*_: object) -> str:
    from distributed import get_worker

    return get_worker().address


def gated(i: int, ev: Event) -> int:
    ev.wait()
    return i


def inc(x: int) -> int:
    return x + 1


@gen_cluster(client=True, nthreads=[CPU, CPU, GPU1])
async def test_cpu_batches_never_run_on_the_gpu_worker(c, s, a, b, g):
    await c.register_plugin(SwarmPlugin(extensions=(), share_gpu_threads=False))
    ev = Event()
    # submitted before any GPU work exists: 60 root-ish tasks (> 2 x 6 threads)
    batch = c.map(gated, range(60), ev=ev, key=[f"bg-{i}" for i in range(60)])
    followers = [c.submit(where, f, key=f"where-{i}") for i, f in enumerate(batch)]
    await async_poll_for(lambda: len(a.state.tasks) + len(b.state.tasks) >= 6, timeout=30)
    # stock would find them root-ish (a group much larger than the cluster) and queue them
    assert len(s.tasks["bg-0"].group) > 2 * s.total_nthreads
    # CPU workers are full (3 slots each); the GPU worker's free threads still get nothing
    assert not g.state.tasks
    assert not s.workers[g.address].processing
    with dask.annotate(swarm={"gpu": 1}):
        gpu = c.map(where, range(4), key=[f"gpu-{i}" for i in range(4)])
    assert set(await c.gather(gpu)) == {g.address}
    await ev.set()
    placed = await c.gather(followers)
    assert g.address not in placed  # the dependents of the batch too
    assert set(placed) == {a.address, b.address}  # and both CPU workers took work
    # after the GPU work finished: more CPU work, still not on the GPU worker
    late = c.map(where, range(40), key=[f"late-{i}" for i in range(40)])
    assert g.address not in set(await c.gather(late))
    assert g.address not in {ws.address for f in batch for ws in s.tasks[f.key].who_has}


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_a_gpu_worker_lends_only_its_spare_thread_while_gpu_work_is_outstanding(c, s, a, g):
    await c.register_plugin(SwarmPlugin(extensions=()))  # share-gpu-threads: the default
    ev = Event()
    with dask.annotate(swarm={"gpu": 1}):
        first = c.submit(gated, -1, ev, key="gpu-first")
    await async_poll_for(lambda: "gpu-first" in g.state.tasks, timeout=30)
    flood = c.map(gated, range(30), ev=ev, key=[f"flood-{i}" for i in range(30)])
    # the CPU worker's 3 slots and the GPU worker's one spare thread (of 2) fill up
    await async_poll_for(lambda: len(s.workers[a.address].processing) >= 3, timeout=30)
    await async_poll_for(lambda: len(s.workers[g.address].processing) >= 2, timeout=30)
    with dask.annotate(swarm={"gpu": 1}):
        second = c.submit(where, 1, key="gpu-second")
    await async_poll_for(lambda: "gpu-second" in g.state.tasks, timeout=30)
    on_g = {ts.key for ts in s.workers[g.address].processing}
    assert sum(k.startswith("flood") for k in on_g) == 1  # one lent thread, no more
    assert {"gpu-first", "gpu-second"} <= on_g
    await ev.set()
    assert await first == -1
    assert await second == g.address
    assert await c.gather(flood) == list(range(30))
    ran = {ws.address for f in flood for ws in s.tasks[f.key].who_has}
    assert ran == {a.address, g.address}


@gen_cluster(client=True, nthreads=[GPU1])
async def test_cpu_work_runs_on_a_gpu_worker_that_is_alone(c, s, g):
    await c.register_plugin(SwarmPlugin(extensions=()))
    batch = c.map(inc, range(40), key=[f"cpu-{i}" for i in range(40)])
    with dask.annotate(swarm={"gpu": 1}):
        trained = c.map(inc, batch[:8], key=[f"gpu-{i}" for i in range(8)])
    assert await c.gather(trained) == [i + 2 for i in range(8)]
    assert set(await c.gather(c.map(where, batch))) == {g.address}


@gen_cluster(client=True, nthreads=[GPU1_ONE_THREAD])
async def test_feeders_of_gpu_work_run_on_a_lone_one_thread_gpu_worker(c, s, g):
    """The thread a GPU worker keeps for GPU work must not starve that work's own inputs."""
    await c.register_plugin(SwarmPlugin(extensions=()))
    preps = c.map(inc, range(6), key=[f"prep-{i}" for i in range(6)])
    with dask.annotate(swarm={"gpu": 1}):
        trained = c.map(inc, preps, key=[f"train-{i}" for i in range(6)])
    assert await c.gather(trained) == [i + 2 for i in range(6)]


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_cpu_work_moves_to_the_gpu_worker_when_the_last_cpu_worker_leaves(c, s, a, g):
    await c.register_plugin(SwarmPlugin(extensions=(), share_gpu_threads=False))
    ev = Event()
    batch = c.map(gated, range(20), ev=ev, key=[f"bg-{i}" for i in range(20)])
    await async_poll_for(lambda: len(a.state.tasks) >= 3, timeout=30)
    assert not s.workers[g.address].processing
    await a.close(executor_wait=False)
    await async_poll_for(lambda: len(s.workers) == 1, timeout=30)
    await ev.set()
    assert await c.gather(batch) == list(range(20))
    await wait(batch)
    assert {ws.address for f in batch for ws in s.tasks[f.key].who_has} == {g.address}
