"""SwarmAdaptive: GPU and CPU pools scale separately on a SpecCluster with two worker specs."""

from __future__ import annotations

import math
import time

import dask
import pytest
from distributed import Client, Event, LocalCluster, Worker
from distributed.utils_test import async_poll_for

from swarmstore.compute.adaptive import Pool, PoolPlanner, PoolReport, SwarmAdaptive
from swarmstore.compute.replication import ReplicationPlugin
from swarmstore.errors import ConfigError

CPU_SPEC = {"cls": Worker, "options": {"nthreads": 1}}
GPU_SPEC = {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}


def busy(x: int, delay: float = 0.4) -> int:
    time.sleep(delay)
    return x


def gated(x: int, ev: Event) -> int:
    ev.wait()
    return x


# ------------------------------------------------------------------ planner alone
def _pools(cpu_min=1, gpu_min=0):
    return [
        Pool("cpu", CPU_SPEC, minimum=cpu_min, maximum=3),
        Pool("gpu", GPU_SPEC, minimum=gpu_min, maximum=2),
    ]


def test_pool_defaults_from_spec():
    cpu, gpu = _pools()
    assert cpu.resources == {} and cpu.slots == 1
    assert gpu.resources == {"GPU": 1} and gpu.slots == 1
    assert gpu.serves({"GPU": 1}) and not gpu.serves(None) and not gpu.serves({"GPU": 2})
    assert cpu.serves(None) and not cpu.serves({"GPU": 1})
    assert Pool("big", {"options": {"nthreads": 4}}).slots == 4


@pytest.mark.parametrize(
    "kwargs", [{"name": ""}, {"name": "a-b"}, {"minimum": -1}, {"minimum": 3, "maximum": 2}]
)
def test_pool_refuses_bad_bounds(kwargs):
    args = {"name": "p", "spec": CPU_SPEC, **kwargs}
    with pytest.raises(ConfigError):
        Pool(**args)


def test_planner_scales_each_pool_on_its_own_demand():
    planner = PoolPlanner(_pools(), wait_count=2)
    plan = planner.plan({"gpu": PoolReport(demand=5)}, {"cpu": 1, "gpu": 0})
    assert plan.add == {"gpu": 2} and plan.retire == []
    plan = planner.plan({"cpu": PoolReport(demand=2)}, {"cpu": 1, "gpu": 0})
    assert plan.add == {"cpu": 1}


def test_planner_scales_down_after_wait_count_and_only_closable_idle():
    planner = PoolPlanner(_pools(), wait_count=2)
    report = {
        "cpu": PoolReport(
            workers=["c1", "c2", "c3"], idle=["c1", "c2", "c3"], closable=["c2", "c3"]
        )
    }
    assert planner.plan(report, {"cpu": 3}).retire == []  # first low reading: wait
    assert planner.plan(report, {"cpu": 3}).retire == ["c2", "c3"]
    assert planner.target(planner.pools["cpu"], 0) == 1  # the minimum
    assert planner.target(planner.pools["cpu"], 100) == 3  # the maximum


def test_planner_refuses_duplicate_pools():
    with pytest.raises(ConfigError):
        PoolPlanner([Pool("a", CPU_SPEC), Pool("a", GPU_SPEC)])
    assert math.isinf(Pool("a", CPU_SPEC).maximum)


# ------------------------------------------------------------------ on a SpecCluster
def _pool_sizes(cluster) -> dict[str, int]:
    sizes = {"cpu": 0, "gpu": 0}
    for ws in cluster.scheduler.workers.values():
        sizes["gpu" if ws.resources.get("GPU") else "cpu"] += 1
    return sizes


async def test_bursts_scale_the_right_pool_and_idle_returns_to_minimum():
    """Each burst is held (gated on an Event) until its pool has grown, so a loaded machine
    that runs the tasks late or slowly changes how long the polls take, never what they see."""
    async with (
        LocalCluster(
            n_workers=0, processes=False, asynchronous=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        adaptive = SwarmAdaptive(cluster, _pools(), interval="50ms", wait_count=2)
        await async_poll_for(lambda: _pool_sizes(cluster) == {"cpu": 1, "gpu": 0}, timeout=60)

        gate = Event()
        with dask.annotate(resources={"GPU": 1}):
            gpu_futs = client.map(gated, range(6), ev=gate, key=[f"g{i}" for i in range(6)])
        await async_poll_for(lambda: _pool_sizes(cluster)["gpu"] == 2, timeout=60)
        assert _pool_sizes(cluster)["cpu"] == 1, "a GPU burst added CPU workers"
        await gate.set()
        await client.gather(gpu_futs)
        del gpu_futs

        gpu_names = {n for n in cluster.worker_spec if str(n).startswith("gpu-")}
        gate = Event()
        cpu_futs = client.map(gated, range(6), ev=gate, key=[f"c{i}" for i in range(6)])
        await async_poll_for(lambda: _pool_sizes(cluster)["cpu"] == 3, timeout=60)
        now = {n for n in cluster.worker_spec if str(n).startswith("gpu-")}
        assert now <= gpu_names, "a CPU burst added GPU workers"
        await gate.set()
        await client.gather(cpu_futs)
        del cpu_futs

        def at_minimum() -> bool:
            want = {"cpu": 1, "gpu": 0}
            return _pool_sizes(cluster) == want and adaptive.current() == want

        await async_poll_for(at_minimum, timeout=60)
        adaptive.stop()


async def test_scale_down_never_loses_a_critical_key():
    async with (
        LocalCluster(
            n_workers=0, processes=False, asynchronous=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        await client.register_plugin(ReplicationPlugin())
        pools = [Pool("cpu", CPU_SPEC, minimum=0, maximum=3), Pool("gpu", GPU_SPEC)]
        adaptive = SwarmAdaptive(cluster, pools, interval="50ms", wait_count=2)
        futs = client.map(busy, range(3), delay=0.3, key=["a0", "a1", "a2"])
        await async_poll_for(lambda: _pool_sizes(cluster)["cpu"] == 3, timeout=10)
        with dask.annotate(swarm={"replicas": 3}):
            x = client.submit(sum, futs, key="x")
        await x
        del futs
        # idle, minimum 0: the pool shrinks, yet one holder of x always stays
        await async_poll_for(lambda: _pool_sizes(cluster)["cpu"] == 1, timeout=15)
        for _ in range(5):
            await adaptive.adapt()
        assert _pool_sizes(cluster)["cpu"] == 1
        assert await x == 3
        adaptive.stop()
