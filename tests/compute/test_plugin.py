"""SwarmPlugin on real in-process clusters (gen_cluster), and its hooks called directly."""

from __future__ import annotations

import time
from collections import Counter

import dask
import pytest
from distributed import Event, Worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster

from swarmstore.compute import SwarmPlugin, annotate
from swarmstore.errors import PlacementError, UnsatisfiableRequirements
from swarmstore.hashing import Member, Rendezvous

CPU = ("127.0.0.1", 2)
GPU1 = ("127.0.0.1", 2, {"resources": {"GPU": 1, "GPU_MEMORY": 16e9}})
GPU4 = ("127.0.0.1", 2, {"resources": {"GPU": 4, "GPU_MEMORY": 64e9}})


def inc(x: int) -> int:
    return x + 1


def where(_: object = None) -> str:
    from distributed import get_worker

    return get_worker().address


def plugin_of(s) -> SwarmPlugin:
    return s.plugins["swarmstore"]


def owners_of(workers, weight: float = 2.0):
    """chunk -> address as SwarmPlugin's ring picks it (workers known by name)."""
    ring = Rendezvous([Member(f"name:{w.name}", weight=weight) for w in workers])
    by_name = {f"name:{w.name}": w.address for w in workers}
    return lambda chunk: by_name[ring.owner(chunk).name]


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_gpu_tasks_go_to_gpu_workers_only(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=()))
    with dask.annotate(swarm={"gpu": 1}):
        futs = c.map(where, range(10), pure=False)
    assert set(await c.gather(futs)) == {b.address}
    # stock resources= annotations are balanced too and keep working
    futs = c.map(where, range(10, 14), resources={"GPU": 1}, pure=False)
    assert set(await c.gather(futs)) == {b.address}


@gen_cluster(client=True, nthreads=[GPU1, GPU4])
async def test_gpu_tasks_dispatched_by_free_slots(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=()))
    plugin = plugin_of(s)
    ev = Event()
    with dask.annotate(swarm={"gpu": 1}):
        futs = c.map(lambda i, ev: (ev.wait(), where())[1], range(20), ev=ev, pure=False)
    # 1 GPU vs 4 GPUs, prefetch 1: 2 and 8 in flight, the other 10 held on the scheduler
    committed = plugin.dispatcher.committed
    await async_poll_for(lambda: len(committed) == 10, timeout=5)
    held = [f for f in futs if s.tasks[f.key].state == "no-worker"]
    assert len(held) == 10
    assert Counter(c.worker for c in committed.values()) == {a.address: 2, b.address: 8}
    assert plugin.dispatcher.committed_gpu(b.address) == (8.0, 0.0)
    # the 1-GPU worker gets its 2 and no more (the messages may still be on their way)
    await async_poll_for(lambda: len(a.state.tasks) == 2, timeout=5)
    await ev.set()
    placed = Counter(await c.gather(futs))
    assert placed[a.address] >= 2 and placed[b.address] >= 8
    await async_poll_for(lambda: not committed, timeout=5)
    assert plugin.dispatcher.committed_gpu(a.address) == (0, 0)


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_held_gpu_task_survives_worker_loss(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="20s"))
    ev = Event()
    with dask.annotate(swarm={"gpu": 1}):
        futs = c.map(lambda i, ev: (ev.wait(), where())[1], range(4), ev=ev, pure=False)
    await async_poll_for(lambda: len(plugin_of(s).dispatcher.committed) == 2, timeout=5)
    await b.close(executor_wait=False)  # the only GPU worker goes; its tasks are held again
    async with Worker(s.address, nthreads=2, resources={"GPU": 1}) as w:
        await ev.set()
        assert set(await c.gather(futs)) == {w.address}


@gen_cluster(client=True, nthreads=[GPU1, GPU1])
async def test_gpu_memory_is_a_resource(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=()))
    with dask.annotate(swarm={"gpu_memory": "10GB"}):
        fut = c.submit(where, 0, pure=False)
    assert await fut in {a.address, b.address}
    assert s.tasks[fut.key].resource_restrictions == {"GPU": 1.0, "GPU_MEMORY": 10e9}


@pytest.mark.parametrize("share", [False, True])
def test_cpu_work_leaves_the_gpu_worker_to_gpu_work(share):
    @gen_cluster(client=True, nthreads=[CPU, GPU1])
    async def run(c, s, a, b):
        await c.register_plugin(SwarmPlugin(extensions=(), share_gpu_threads=share))
        ev = Event()
        with dask.annotate(swarm={"gpu": 1}):
            g = c.submit(lambda ev: ev.wait(), ev, key="gpu-gated", pure=False)
        cpu = c.map(lambda i, ev: ev.wait(), range(20), ev=ev, pure=False)  # root-ish too
        await async_poll_for(lambda: len(a.state.tasks) >= 2, timeout=5)
        await async_poll_for(lambda: s.tasks[g.key].state == "processing", timeout=5)
        on_gpu = [f for f in cpu if s.tasks[f.key].processing_on is s.workers[b.address]]
        # a CPU worker runs: CPU work waits for it, or takes the GPU worker's spare thread
        assert len(on_gpu) <= (1 if share else 0)
        assert not s.queued  # the plugin queues them (by free slots), not Dask
        assert sum(s.tasks[f.key].state == "no-worker" for f in cpu) >= 20 - 3 - share
        assert len(s.workers[a.address].processing) <= 3  # ceil(1.1 * 2 threads)
        assert len(s.workers[b.address].processing) <= 2  # the GPU task + a lent thread
        await ev.set()
        await wait([g, *cpu])

    run()


@pytest.mark.parametrize("share", [False, True])
def test_cpu_tasks_on_gpu_workers_when_no_gpu_work_exists(share):
    @gen_cluster(client=True, nthreads=[CPU, GPU1])
    async def run(c, s, a, b):
        await c.register_plugin(SwarmPlugin(extensions=(), share_gpu_threads=share))
        ev = Event()
        cpu = c.map(lambda i, ev: ev.wait(), range(20), ev=ev, pure=False)
        await async_poll_for(lambda: len(s.workers[a.address].processing) >= 3, timeout=30)
        if share:
            await async_poll_for(lambda: len(s.workers[b.address].processing) >= 2, timeout=30)
        # strict: the GPU worker waits for GPU work; shared: every thread, no prefetch
        assert len(s.workers[b.address].processing) == (2 if share else 0)
        with dask.annotate(swarm={"gpu": 1}):
            g = c.submit(lambda ev: ev.wait(), ev, key="gpu-late", pure=False)
        gws = s.workers[b.address]
        await async_poll_for(lambda: any(ts.key == g.key for ts in gws.processing), 30)
        await ev.set()
        await wait([*cpu, g])

    run()


@gen_cluster(client=True, nthreads=[CPU, GPU1, GPU1])
async def test_user_restrictions_left_alone(c, s, a, b, g2):
    await c.register_plugin(SwarmPlugin(extensions=()))
    futs = c.map(where, range(4), workers=[b.address], pure=False)
    assert set(await c.gather(futs)) == {b.address}
    with dask.annotate(swarm={"gpu": 1}):  # workers= wins over the GPU hold and balance
        futs = c.map(where, range(4), workers=[g2.address], pure=False)
    assert set(await c.gather(futs)) == {g2.address}
    assert not plugin_of(s).held


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_cpu_fallback_when_no_cpu_worker(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=()))
    futs = c.map(inc, range(4))
    await wait(futs)
    await a.close()
    await async_poll_for(lambda: len(s.workers) == 1, timeout=5)
    futs2 = c.map(where, range(100, 104), pure=False)
    assert set(await c.gather(futs2)) == {b.address}


@gen_cluster(client=True, nthreads=[CPU] * 3)
async def test_chunk_affinity_follows_rendezvous(c, s, *workers):
    await c.register_plugin(SwarmPlugin(extensions=()))
    chunks = [f"arr/c/{i}" for i in range(30)]
    futs = []
    for i, ck in enumerate(chunks):
        with dask.annotate(swarm={"chunk": ck}):
            futs.append(c.submit(where, i, pure=False))
    got = await c.gather(futs)
    owner = owners_of(workers)
    assert got == [owner(ck) for ck in chunks]
    assert len(set(got)) == 3
    # second pass: same workers
    futs2 = []
    for i, ck in enumerate(chunks):
        with dask.annotate(swarm={"chunk": ck}):
            futs2.append(c.submit(where, 1000 + i, pure=False))
    assert await c.gather(futs2) == got


@gen_cluster(client=True, nthreads=[CPU] * 3)
async def test_chunk_tasks_move_when_owner_leaves(c, s, *workers):
    await c.register_plugin(SwarmPlugin(extensions=()))
    ev = Event()
    gate = c.submit(lambda ev: ev.wait(), ev, pure=False, workers=[workers[0].address])
    chunks = [f"arr/c/{i}" for i in range(24)]
    futs = []
    for ck in chunks:
        with dask.annotate(swarm={"chunk": ck}):
            futs.append(c.submit(lambda g, ck: where(), gate, ck, pure=False))
    await async_poll_for(lambda: all(f.key in s.tasks for f in futs), timeout=5)
    victim = workers[2]
    pinned_to_victim = [f for f in futs if s.tasks[f.key].worker_restrictions == {victim.address}]
    assert pinned_to_victim
    await victim.close()
    await ev.set()
    got = await c.gather(futs)
    assert victim.address not in got
    survivor = owners_of(workers[:2])
    for f, ck, addr in zip(futs, chunks, got, strict=True):
        if f in pinned_to_victim:
            assert addr == survivor(ck)


@gen_cluster(client=True, nthreads=[CPU])
async def test_priority_mapped(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=()))
    with dask.annotate(swarm={"priority": "high"}):
        hi = c.submit(inc, 1)
    with dask.annotate(swarm={"priority": -3}):
        lo = c.submit(inc, 2)
    plain = c.submit(inc, 3, priority=5)  # the standard priority= keeps working
    await wait([hi, lo, plain])
    assert s.tasks[hi.key].priority[0] == -10
    assert s.tasks[lo.key].priority[0] == 3
    assert s.tasks[plain.key].priority[0] == -5


@gen_cluster(client=True, nthreads=[CPU, GPU1])
async def test_feeders_are_known_by_their_gpu_task(c, s, a, b):
    await c.register_plugin(SwarmPlugin(extensions=()))
    ev = Event()
    gate = c.submit(lambda ev: ev.wait(), ev, key="gate", workers=[a.address])
    x = c.submit(inc, gate, key="feeder")  # submitted first, waits on the gate
    await async_poll_for(lambda: "feeder" in s.tasks, timeout=5)
    with dask.annotate(swarm={"gpu": 1}):
        y = c.submit(inc, x, key="gpu-task")
    await async_poll_for(lambda: "gpu-task" in s.tasks, timeout=5)
    assert plugin_of(s).held.consumer_of["feeder"] == "gpu-task"
    await ev.set()
    assert await y == 3


def decode(i: int) -> bytes:
    return bytes(2**20)  # 1 MiB, as a decoded block


@gen_cluster(client=True, nthreads=[CPU, CPU, GPU1])
async def test_producers_feeding_a_gpu_are_throttled(c, s, *workers):
    """#9164: CPU decodes feeding a slow GPU stage stop at the pipe limit, not all in memory."""
    await c.register_plugin(SwarmPlugin(extensions=()))
    ev = Event()
    blocks = c.map(decode, range(60), key=[f"decode-{i}" for i in range(60)])
    with dask.annotate(swarm={"gpu": 1}):
        out = c.map(lambda blk, ev: (ev.wait(), len(blk))[1], blocks, ev=ev, pure=False)
    limit = plugin_of(s).dispatcher.pipe_limit

    def state(key: str) -> str | None:
        ts = s.tasks.get(key)
        return None if ts is None else ts.state

    def decoded() -> int:
        return sum(state(b.key) == "memory" for b in blocks)

    def settled() -> bool:  # decodes stopped: none running or waiting to run on a worker
        return decoded() >= 1 and not any(state(b.key) == "processing" for b in blocks)

    await async_poll_for(settled, timeout=15)  # without the throttle: only once all 60 ran
    # the pipe's limit, plus one round of free slots (9) dispatched before the GPU graph
    # arrived and made those decodes known as feeders
    assert decoded() <= limit + 9 < 60
    await ev.set()
    assert await c.gather(out) == [2**20] * 60


@gen_cluster(client=True, nthreads=[CPU])
async def test_invalid_annotation_fails_task_with_clear_error(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=()))
    with dask.annotate(swarm={"gpus": 1}):
        bad = c.submit(inc, 1)
    with pytest.raises(PlacementError, match="unknown swarm annotation key 'gpus'"):
        await bad
    with dask.annotate(swarm={"gpu_memory": "lots"}):
        bad2 = c.submit(inc, 2)
    with pytest.raises(PlacementError, match="not a byte size"):
        await bad2
    assert await c.submit(inc, 3) == 4  # the cluster is fine


def test_client_side_validation():
    with pytest.raises(PlacementError, match="replicas"), annotate(replicas=0):
        pass
    with annotate(gpu=0.5, critical=True, replicas=2) as req:
        assert dask.get_annotations()["swarm"] == {"gpu": 0.5, "critical": True, "replicas": 2}
    assert req.gpu == 0.5 and req.critical and req.replicas == 2


@gen_cluster(client=True, nthreads=[CPU])
async def test_unsatisfiable_fails_after_timeout(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="200ms"))
    events = []
    with dask.annotate(swarm={"gpu": 1}):
        fut = c.submit(inc, 1)
    t0 = time.monotonic()
    with pytest.raises(UnsatisfiableRequirements, match="no worker of 1 can give them"):
        await fut
    assert time.monotonic() - t0 >= 0.2
    events = [m for _, m in s.get_events("swarmstore")]
    actions = [e["action"] for e in events]
    assert "unsatisfiable-waiting" in actions and "unsatisfiable-failed" in actions


@gen_cluster(client=True, nthreads=[CPU])
async def test_worker_joining_in_time_runs_task(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="10s"))
    with dask.annotate(swarm={"gpu": 1}):
        fut = c.submit(inc, 1)
    await async_poll_for(lambda: fut.key in s.tasks and s.tasks[fut.key].state == "no-worker", 5)
    # a GPU worker joins before the timeout: the task runs instead of failing
    async with Worker(s.address, nthreads=1, resources={"GPU": 1}):
        assert await fut == 2


# ---------------------------------------------------------------- extension protocol
class Recorder:
    """A real (tiny) extension: records what it is told, narrows downscaling."""

    instances: list[Recorder] = []

    def __init__(self, scheduler, plugin) -> None:
        self.scheduler = scheduler
        self.plugin = plugin
        self.calls: list[str] = []
        self.seen_requirements: dict = {}
        Recorder.instances.append(self)

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self) -> None:
        self.calls.append("close")

    def update_graph(self, scheduler, *, keys, annotations, **kwargs) -> None:
        self.calls.append("update_graph")
        for k in keys:
            if k in self.plugin.requirements:
                self.seen_requirements[k] = self.plugin.requirements[k]

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        self.calls.append(f"transition:{finish}")

    def add_worker(self, scheduler, worker) -> None:
        self.calls.append("add_worker")

    def remove_worker(self, scheduler, worker, **kwargs) -> None:
        self.calls.append("remove_worker")

    def valid_workers_downscaling(self, scheduler, workers):
        return [w for w in workers if w.address != self.keep] + [object()]  # adds: ignored

    keep = ""


class Broken:
    def __init__(self, scheduler, plugin) -> None:
        pass

    def update_graph(self, scheduler, **kwargs) -> None:
        raise RuntimeError("boom")


@gen_cluster(client=True, nthreads=[CPU, CPU])
async def test_extension_protocol(c, s, a, b):
    Recorder.instances.clear()
    spec = f"{__name__}:Recorder"
    plugin = SwarmPlugin(extensions=(spec, Broken, "no.such.module:Thing"))
    await c.register_plugin(plugin)
    (rec,) = Recorder.instances
    assert rec.plugin is plugin_of(s) and rec.scheduler is s
    with dask.annotate(swarm={"critical": True, "replicas": 3}):
        fut = c.submit(inc, 1, key="crit")
    assert await fut == 2  # the broken extension did not stop placement or the task
    assert rec.seen_requirements["crit"].replicas == 3
    assert rec.seen_requirements["crit"].critical
    assert {"start", "update_graph", "transition:memory"} <= set(rec.calls)
    Recorder.keep = a.address
    allowed = s.plugins["swarmstore"].valid_workers_downscaling(s, list(s.workers.values()))
    assert [w.address for w in allowed] == [b.address]
    await b.close()
    await async_poll_for(lambda: "remove_worker" in rec.calls, timeout=5)
    await plugin_of(s).close()
    assert rec.calls[-1] == "close"
    assert not plugin_of(s).extensions  # closing twice (at scheduler close) is harmless


def test_default_extensions_skip_missing(monkeypatch, caplog):
    from swarmstore.compute import _extensions
    from swarmstore.compute import plugin as mod

    monkeypatch.setattr(mod, "DEFAULT_EXTENSIONS", ("swarmstore.compute.nonexistent:Thing",))
    assert _extensions.load("swarmstore.compute.nonexistent:Thing") is None
    assert "not loaded" in caplog.text
    assert SwarmPlugin().extension_specs == mod.DEFAULT_EXTENSIONS


@gen_cluster(client=True, nthreads=[CPU])
async def test_default_extension_is_replication(c, s, a):
    await c.register_plugin(SwarmPlugin())
    names = [type(e).__name__ for e in plugin_of(s).extensions]
    assert names == ["ReplicationController"]


# ---------------------------------------------------------------- hooks called directly
@gen_cluster(nthreads=[CPU, GPU1])
async def test_hooks_direct(s, a, b):
    """update_graph's work, without a client: the scheduler swallows hook errors."""
    plugin = SwarmPlugin(extensions=())
    await plugin.start(s)
    assert dask.config.get("optimization.fuse.active") is None  # no process-wide change
    assert s.stream_handlers["update-graph"] == plugin._guard.update_graph
    assert set(plugin.placer.workers) == {a.address, b.address}
    # nothing of ours -> nothing happens, even with GPU workers and no tasks
    plugin.update_graph(s, keys=set(), tasks=[], annotations={})
    plugin.update_graph(s, keys={"x"}, tasks=["x"], annotations={"swarm": {"x": {"gpu": 1}}})
    assert plugin.requirements["x"].gpu == 1  # parsed even though no TaskState exists
    plugin.transition("x", "released", "forgotten")
    assert "x" not in plugin.requirements
    plugin.remove_worker(s, b.address, stimulus_id="test")
    assert not plugin.placer.has_gpu_workers
    plugin.add_worker(s, b.address)
    assert plugin.placer.has_gpu_workers
    await plugin.close()
    assert s.stream_handlers["update-graph"] == s.update_graph  # put back


def test_plugin_is_a_scheduler_plugin():
    assert isinstance(SwarmPlugin(extensions=()), SchedulerPlugin)


# zarr keeps its IO event-loop thread and pool for the process's life: not a leak of ours
@gen_cluster(client=True, nthreads=[CPU] * 3, clean_kwargs={"threads": False})
async def test_dataset_read_tasks_follow_their_chunks(c, s, *workers):
    """swarmstore.open_array(..., dask=True) annotates reads; SwarmPlugin places them."""
    import tempfile

    import numpy as np
    import zarr

    from swarmstore.dataset import READ_PREFIX, open_array

    await c.register_plugin(SwarmPlugin(extensions=()))
    path = tempfile.mkdtemp()
    zarr.create_array(path, shape=(40,), chunks=(4,), dtype="i4")[:] = np.arange(40)
    # no affinity_config(): SwarmPlugin keeps annotations through materialisation (and in
    # this one-process cluster its config change reaches the client's check too)
    x = c.persist(open_array(path, dask=True))
    await wait(x)
    plugin = plugin_of(s)
    reqs = dict(plugin.requirements)
    assert len(reqs) == 10
    assert all(k[0].startswith(READ_PREFIX) for k in reqs)
    owner = owners_of(workers)
    owners = {k: owner(r.chunk) for k, r in reqs.items()}
    assert len(set(owners.values())) >= 2
    for key, owner in owners.items():
        assert {ws.address for ws in s.tasks[key].who_has} == {owner}
    assert await c.compute(x.sum()) == sum(range(40))


@gen_cluster(client=True, nthreads=[CPU])
async def test_unmanaged_resource_waits_for_a_worker_past_the_timeout(c, s, a):
    """Only GPU requests are failed; {"X": 1} waits for a worker as in stock Dask."""
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="100ms"))
    x = c.submit(inc, 1, resources={"X": 1}, key="needs-x")
    with dask.annotate(swarm={"gpu": 1}):
        g = c.submit(inc, 2, key="needs-gpu")
    with pytest.raises(UnsatisfiableRequirements):
        await g  # the timeout has passed, and the checks ran
    assert s.tasks["needs-x"].state == "no-worker"
    async with Worker(s.address, nthreads=1, resources={"X": 1}):
        assert await x == 2


@gen_cluster(client=True, nthreads=[CPU])
async def test_one_log_line_per_unsatisfiable_requirement(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=(), unsatisfiable_timeout="100ms"))
    with captured_logger("swarmstore.compute.plugin") as log:
        with dask.annotate(swarm={"gpu": 1}):
            futs = c.map(inc, range(10), key=[f"g-{i}" for i in range(10)])
        for f in futs:
            with pytest.raises(UnsatisfiableRequirements, match="no worker of 1 can give"):
                await f
    lines = log.getvalue().splitlines()
    assert len([ln for ln in lines if "no worker can run tasks needing" in ln]) == 1
    assert len([ln for ln in lines if "failed: each" in ln]) == 1
    actions = [m["action"] for _, m in s.get_events("swarmstore")]
    assert actions.count("unsatisfiable-waiting") == 1
    assert actions.count("unsatisfiable-failed") == 1


@gen_cluster(client=True, nthreads=[CPU, CPU])
async def test_fusion_changes_for_annotated_graphs_on_the_scheduler_only(c, s, a, b):
    """distributed's test_task_group_non_tuple_key with SwarmPlugin: stock fusion for graphs
    without our annotations, annotations kept for graphs with them, config untouched."""
    np = pytest.importorskip("numpy")
    da = pytest.importorskip("dask.array")
    await c.register_plugin(SwarmPlugin(extensions=()))
    assert dask.config.get("optimization.fuse.active", None) is None
    y = await c.persist((da.arange(100, chunks=(20,)) + 1).sum())
    assert s.task_prefixes["sum"].states["released"] == 4  # fused as stock fuses
    await c.submit(np.sum, [1, 2, 3])
    assert s.task_prefixes["sum"].states["memory"] == 1
    with dask.annotate(swarm={"priority": 3}):
        z = da.ones(40, chunks=10).map_blocks(lambda b: b * 2, name="annotated")
    assert await c.compute(z.sum()) == 80
    plugin = plugin_of(s)
    assert sum(1 for k in plugin.requirements if k[0].startswith("annotated")) == 4
    assert plugin._guard.graphs_kept == 1
    assert dask.config.get("optimization.fuse.active", None) is None  # nothing process-wide
    del y


@gen_cluster(client=True, nthreads=[CPU] * 2)
async def test_chunks_follow_a_named_worker_restarted_on_a_new_port(c, s, a, b):
    """Issue 12: the ring keys workers by name, so a restart keeps each worker's chunks."""
    await c.register_plugin(SwarmPlugin(extensions=()))
    chunks = [f"arr/c/{i}" for i in range(40)]

    async def placed(tag: str) -> list[str]:
        futs = []
        for i, ck in enumerate(chunks):
            with dask.annotate(swarm={"chunk": ck}):
                futs.append(c.submit(where, f"{tag}-{i}", pure=False))
        return await c.gather(futs)

    before = await placed("before")
    assert set(before) == {a.address, b.address}
    name, old = b.name, b.address
    await b.close()
    await async_poll_for(lambda: old not in s.workers, timeout=10)
    async with Worker(s.address, nthreads=2, name=name) as b2:
        assert b2.address != old
        after = await placed("after")
    assert after == [b2.address if w == old else w for w in before]
