"""Critical-key replication: decisions alone, the controller on in-process clusters, kill -9."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from contextlib import contextmanager

import dask
import pytest
from distributed import Client, LocalCluster, SchedulerPlugin, wait
from distributed.active_memory_manager import ReduceReplicas
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster, inc, poll_for

from swarmstore.compute import SwarmPlugin
from swarmstore.compute.replication import (
    Candidate,
    HonourReplicaCounts,
    ReplicationController,
    ReplicationPlugin,
    desired_replicas,
    narrow_downscaling,
    pick_recipients,
)
from swarmstore.errors import PlacementError

FAST = {"distributed.scheduler.active-memory-manager.interval": "50ms"}
# Only the fast path may act: the AMM waits a minute between runs.
SLOW_AMM = {"distributed.scheduler.active-memory-manager.interval": "60s"}


# ------------------------------------------------------------------ decisions
def test_desired_replicas_reads_counts_and_critical():
    assert desired_replicas({"critical": True}, 2) == 2
    assert desired_replicas({"critical": True, "replicas": 3}, 2) == 3
    assert desired_replicas({"replicas": 1}, 2) == 1
    assert desired_replicas({"critical": False}, 2) is None
    assert desired_replicas({"persist": True}, 2) is None
    assert desired_replicas(None, 2) is None

    class Parsed:  # SwarmPlugin may hand over parsed requirement objects
        critical = True
        replicas = None

    assert desired_replicas(Parsed(), 4) == 4


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_desired_replicas_refuses_bad_counts(bad):
    with pytest.raises(PlacementError, match="replicas="):
        desired_replicas({"replicas": bad}, 2)


def test_pick_recipients_prefers_fresh_hosts_then_least_loaded():
    cands = [
        Candidate("a1", "hA", 0),
        Candidate("b1", "hB", 100),
        Candidate("b2", "hB", 10),
        Candidate("c1", "hC", 50),
    ]
    assert pick_recipients({"hA"}, cands, 1) == ["b2"]
    assert pick_recipients({"hA"}, cands, 2) == ["b2", "c1"]
    # hosts run out: fall back to distinct workers, least loaded first
    assert pick_recipients({"hA"}, cands, 4) == ["b2", "c1", "a1", "b1"]
    assert pick_recipients({"hA"}, cands, 9) == ["b2", "c1", "a1", "b1"]
    assert pick_recipients(set(), [], 2) == []


def test_narrow_downscaling_keeps_last_holder_and_last_gpu():
    holders = {"k1": {"a", "b"}, "k2": {"c"}}
    assert narrow_downscaling(["a", "b"], holders, set()) == ["a"]
    assert narrow_downscaling(["c", "d"], holders, set()) == ["d"]
    assert narrow_downscaling(["g1", "g2"], {}, {"g1", "g2"}) == ["g1"]
    assert narrow_downscaling(["g1", "g2"], {}, {"g1", "g2"}, keep_last_gpu=False) == ["g1", "g2"]
    assert narrow_downscaling(["g1"], {}, {"g1", "g2"}) == ["g1"]


# ------------------------------------------------------------------ controller on a cluster
async def _start_controller(s, **kwargs) -> ReplicationController:
    """A controller built on the scheduler directly, its hooks fed by the thin plugin."""
    plugin = ReplicationPlugin(**kwargs)
    s.add_plugin(plugin)
    await plugin.start(s)
    assert isinstance(plugin.controller, ReplicationController)
    return plugin.controller


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=SLOW_AMM)
async def test_critical_key_replicated_on_reaching_memory(c, s, *workers):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    y = c.submit(inc, 2, key="y")
    await c.gather([x, y])
    # the AMM waits 60 s: only the fast path can have made the copy
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    assert len(s.tasks["y"].who_has) == 1
    assert ctl.desired == {"x": 2}
    assert ctl.fast_requests == 1
    await ctl.close()


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=SLOW_AMM)
async def test_replicas_count_from_annotation(c, s, *workers):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"replicas": 3}):
        x = c.submit(inc, 1, key="x")
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 3, timeout=5)
    await ctl.close()


@gen_cluster(
    client=True,
    nthreads=[("", 1)] * 3,
    config={"distributed.scheduler.active-memory-manager.start": False},
)
async def test_stock_reduce_replicas_undoes_extra_copies(c, s, *workers):
    """The fact the policy exists for: one stock AMM run drops a second copy."""
    x = c.submit(inc, 1, key="x")
    await x
    await c.replicate([x], n=2)
    assert len(s.tasks["x"].who_has) == 2
    s.extensions["amm"].run_once()
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 1, timeout=5)


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=FAST)
async def test_policy_keeps_counts_and_still_trims_other_keys(c, s, *workers):
    ctl = await _start_controller(s)
    main = s.extensions["amm"]
    (stock,) = [p for p in main.policies if type(p) is ReduceReplicas]
    assert ctl.policy not in main.policies  # nothing tracked yet: stock policies only
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    y = c.submit(inc, 2, key="y")
    await c.gather([x, y])
    await c.replicate([y], n=3)
    await async_poll_for(lambda: len(s.tasks["y"].who_has) == 1, timeout=5)
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    # many policy runs later the count has not flipped
    for _ in range(10):
        await asyncio.sleep(0.05)
        assert len(s.tasks["x"].who_has) == 2
    # a third copy of a critical key is trimmed back to the desired two
    await c.replicate([x], n=3)
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    # ReduceReplicas stayed in the user's AMM, the same object, beside our policy
    assert stock in main.policies and ctl.policy in main.policies
    await ctl.close()
    assert ctl.policy not in main.policies and stock.manager is main


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=SLOW_AMM)
async def test_lost_copy_is_replaced_at_once(c, s, a, b, w3):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x", workers=[a.address])
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    other = next(ws for ws in s.tasks["x"].who_has if ws.address != a.address)
    victim = b if other.address == b.address else w3
    await victim.close()
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    assert victim.address not in {ws.address for ws in s.tasks["x"].who_has}
    await ctl.close()


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1), ("127.0.0.2", 1), ("127.0.0.2", 1)],
    config=SLOW_AMM,
)
async def test_copies_go_to_distinct_hosts(c, s, a, b1, b2):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x", workers=[b1.address])
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    assert {ws.host for ws in s.tasks["x"].who_has} == {"127.0.0.1", "127.0.0.2"}
    await ctl.close()


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1), ("127.0.0.2", 1), ("127.0.0.2", 1)],
    config=FAST,
)
async def test_amm_policy_alone_replicates_to_fresh_host(c, s, a, b1, b2):
    ctl = await _start_controller(s)
    x = c.submit(inc, 1, key="x", workers=[b2.address])
    await x
    ctl.desired["x"] = 2  # tracked after the fact: only the periodic policy will see it
    ctl._join()
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    assert {ws.host for ws in s.tasks["x"].who_has} == {"127.0.0.1", "127.0.0.2"}
    assert ctl.fast_requests == 0
    assert "HonourReplicaCounts" in repr(ctl.policy)
    assert isinstance(ctl.policy, HonourReplicaCounts)
    await ctl.close()


@gen_cluster(
    client=True,
    nthreads=[("", 1)] * 4,
    worker_kwargs={"resources": {}},
    config=SLOW_AMM,
)
async def test_downscaling_never_retires_last_holder(c, s, *workers):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    holders = {ws.address for ws in s.tasks["x"].who_has}
    valid = ctl.valid_workers_downscaling(s, list(s.workers.values()))
    assert holders - {ws.address for ws in valid}, "one holder must stay"
    assert len(valid) == 3
    await ctl.close()


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=SLOW_AMM)
async def test_workers_to_close_respects_the_plugin(c, s, *workers):
    await c.register_plugin(ReplicationPlugin())
    with dask.annotate(swarm={"replicas": 3}):
        x = c.submit(inc, 1, key="x")
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 3, timeout=5)
    to_close = s.workers_to_close(n=3)
    assert len(to_close) == 2
    await c.retire_workers(to_close)
    assert await x == 2
    assert len(s.workers) == 1


@gen_cluster(
    client=True,
    nthreads=[("", 1), ("", 1)],
    worker_kwargs={"resources": {"GPU": 1}},
    config=SLOW_AMM,
)
async def test_downscaling_keeps_last_gpu_worker(c, s, g1, g2):
    ctl = await _start_controller(s)
    assert len(ctl.valid_workers_downscaling(s, list(s.workers.values()))) == 1
    ctl.keep_last_gpu = False
    assert len(ctl.valid_workers_downscaling(s, list(s.workers.values()))) == 2
    await ctl.close()


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=SLOW_AMM)
async def test_bad_annotation_is_logged_not_raised(c, s, a, b):
    ctl = await _start_controller(s)
    with captured_logger("swarmstore.compute.replication", level=logging.WARNING) as log:
        ctl.update_graph(s, keys={"k"}, annotations={"swarm": {"k": {"replicas": "two"}}})
    assert "bad replication annotation" in log.getvalue()
    assert ctl.desired == {}
    await ctl.close()


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=SLOW_AMM)
async def test_forgotten_keys_leave_the_table(c, s, a, b):
    ctl = await _start_controller(s)
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    await x
    assert "x" in ctl.desired
    del x
    await async_poll_for(lambda: "x" not in s.tasks, timeout=5)
    assert ctl.desired == {} and ctl.inflight == {}
    await ctl.close()


# ------------------------------------------------------------------ kill -9 with nannies
def slow_inc(x: int, delay: float) -> int:
    time.sleep(delay)
    return x + 1


def total(*values: int) -> int:
    return sum(values[:-1])  # the last argument is the gate's result


class ProcessingCounter(SchedulerPlugin):
    """Counts how often each key's result is computed (processing -> memory): more than
    once means it was recomputed. Replicas arriving do not transition the key."""

    name = "processing-counter"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.counts[key] += 1


def run_kill9_workload(
    client: Client, scheduler, *, copies: int, nparts: int = 12
) -> tuple[int, int]:
    """Critical parts, a slow gate, a reduction; kill -9 a part holder while the gate runs.

    Returns (result, recomputations of critical parts).
    """
    counter = ProcessingCounter()
    scheduler.add_plugin(counter)
    with dask.annotate(swarm={"critical": True}):
        parts = [client.submit(slow_inc, i, 0.05, key=f"part-{i}") for i in range(nparts)]
    gate = client.submit(slow_inc, 0, 1.5, key="gate")
    final = client.submit(total, *parts, gate, key="final")
    wait(parts, timeout=30)
    poll_for(lambda: all(len(scheduler.tasks[p.key].who_has) >= copies for p in parts), timeout=10)
    gate_ws = scheduler.tasks["gate"].processing_on
    held = Counter(
        ws.address for p in parts for ws in scheduler.tasks[p.key].who_has if ws is not gate_ws
    )
    victim = held.most_common(1)[0][0]
    pids = client.run(os.getpid)
    os.kill(pids[victim], signal.SIGKILL)
    result = final.result(timeout=60)
    recomputed = sum(counter.counts[f"part-{i}"] - 1 for i in range(nparts))
    return result, recomputed


@pytest.mark.slow
@pytest.mark.parametrize("replicate", [True, False], ids=["swarm", "stock"])
def test_kill9_costs_no_recomputation_of_critical_keys(replicate):
    with (
        dask.config.set({"distributed.scheduler.active-memory-manager.interval": "100ms"}),
        LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        if replicate:  # the user's one line: no config edit
            client.register_plugin(SwarmPlugin())
        result, recomputed = run_kill9_workload(
            client, cluster.scheduler, copies=2 if replicate else 1
        )
    assert result == sum(range(1, 13))
    if replicate:
        assert recomputed == 0
    else:
        assert recomputed > 0  # stock Dask recomputes what the dead worker held


@gen_cluster(client=True, nthreads=[("", 1)] * 3, config=SLOW_AMM)
async def test_end_to_end_through_swarm_plugin(c, s, *workers):
    await c.register_plugin(SwarmPlugin())
    [ctl] = [e for e in s.plugins["swarmstore"].extensions if isinstance(e, ReplicationController)]
    amm = s.extensions["amm"]
    assert ctl.policy not in amm.policies
    with dask.annotate(swarm={"critical": True, "replicas": 3}):
        x = c.submit(inc, 1, key="x")
    y = c.submit(inc, 2, key="y")
    await c.gather([x, y])
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 3, timeout=5)
    assert ctl.desired == {"x": 3} and len(s.tasks["y"].who_has) == 1
    assert len(s.workers_to_close(n=3)) == 2  # one holder of x always stays
    assert ctl.policy in amm.policies
    assert any(type(p) is ReduceReplicas for p in amm.policies)
    await s.plugins["swarmstore"].close()  # unregistering alone does not close a plugin
    assert ctl.policy not in amm.policies


# ------------------------------------------------------------------ the user's AMM (issue 23)
@contextmanager
def amm_log(expect: list[str]):
    """The AMM's log lines, each starting as ``expect`` says (as distributed's own tests do)."""
    with captured_logger("distributed.active_memory_manager", level=logging.DEBUG) as log:
        yield
    actual = log.getvalue().splitlines()
    assert len(actual) == len(expect), actual
    assert all(a.startswith(e) for a, e in zip(actual, expect, strict=True)), actual


TWO_REDUCE = {
    "distributed.scheduler.active-memory-manager.start": False,
    "distributed.scheduler.active-memory-manager.policies": [
        {"class": "distributed.active_memory_manager.ReduceReplicas"},
        {"class": "distributed.active_memory_manager.ReduceReplicas"},
    ],
}


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=TWO_REDUCE)
async def test_untracked_cluster_runs_exactly_the_stock_policies(c, s, *workers):
    """distributed's test_ReduceReplicas, with SwarmPlugin installed: same log, same drops."""
    await c.register_plugin(SwarmPlugin())
    run = ["Running policy: ReduceReplicas()"] * 2
    with amm_log([*run, "Active Memory Manager run in "]):
        s.extensions["amm"].run_once()
    futures = await c.scatter({"x": 123}, broadcast=True)
    assert len(s.tasks["x"].who_has) == 4
    drop = "(drop, <TaskState 'x' memory>, None): dropping from <WorkerState "
    with amm_log(
        [
            run[0],
            drop,
            drop,
            drop,
            "ReduceReplicas: Dropping 3 superfluous replicas of 1 tasks",
            run[1],
            "Enacting suggestions for 1 tasks:",
            *["- <WorkerState "] * 3,
            "Active Memory Manager run in ",
        ]
    ):
        s.extensions["amm"].run_once()
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 1, timeout=5)
    del futures


@gen_cluster(client=True, nthreads=[("", 1)] * 4, config=TWO_REDUCE)
async def test_reduce_replicas_governs_unmarked_keys_beside_critical_ones(c, s, *workers):
    await c.register_plugin(SwarmPlugin())
    amm = s.extensions["amm"]
    stock = [p for p in amm.policies if type(p) is ReduceReplicas]
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    await x
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    y = await c.scatter({"y": 1}, broadcast=True)
    await c.replicate([x], n=4)
    assert len(s.tasks["y"].who_has) == len(s.tasks["x"].who_has) == 4
    amm.run_once()  # one run: y to one copy (stock), x to the two it asked for (ours)
    await async_poll_for(lambda: len(s.tasks["y"].who_has) == 1, timeout=5)
    await async_poll_for(lambda: len(s.tasks["x"].who_has) == 2, timeout=5)
    for _ in range(3):  # and it stays there: ReduceReplicas no longer fights the count
        amm.run_once()
        await asyncio.sleep(0.05)
        assert len(s.tasks["x"].who_has) == 2
    assert [p for p in amm.policies if type(p) is ReduceReplicas] == stock  # in place
    del x, y


@gen_cluster(
    client=True,
    nthreads=[("", 1)] * 3,
    config={
        "distributed.scheduler.active-memory-manager.start": False,
        "distributed.scheduler.active-memory-manager.interval": "20ms",
    },
)
async def test_amm_off_means_no_trimming(c, s, *workers):
    """Copies made by replicate() and broadcast scatter stay when the user turned the AMM off."""
    await c.register_plugin(SwarmPlugin())
    with dask.annotate(swarm={"critical": True}):
        crit = c.submit(inc, 1, key="crit")  # tracked: our policy is in the AMM now
    await crit
    await async_poll_for(lambda: len(s.tasks["crit"].who_has) == 2, timeout=5)  # fast path
    y = c.submit(inc, 2, key="y")
    await c.replicate([y], n=3)
    z = await c.scatter({"z": 3}, broadcast=True)
    assert not any(k.startswith("amm-") for k in s.periodic_callbacks)  # nothing runs it
    await asyncio.sleep(0.3)  # many AMM intervals: stock (and we) trim nothing
    assert len(s.tasks["y"].who_has) == 3 and len(s.tasks["z"].who_has) == 3
    del crit, y, z


@gen_cluster(client=True, nthreads=[("", 1)] * 2, config=SLOW_AMM)
async def test_policy_leaves_the_amm_when_no_key_is_tracked(c, s, a, b):
    await c.register_plugin(SwarmPlugin())
    amm = s.extensions["amm"]
    with dask.annotate(swarm={"critical": True}):
        x = c.submit(inc, 1, key="x")
    await x
    (ctl,) = [e for e in s.plugins["swarmstore"].extensions if isinstance(e, ReplicationController)]
    assert ctl.policy in amm.policies
    assert all(
        type(p.manager).__name__ == "_ShieldedManager"
        for p in amm.policies
        if type(p) is ReduceReplicas
    )
    del x
    await async_poll_for(lambda: ctl.policy not in amm.policies, timeout=5)
    assert all(p.manager is amm for p in amm.policies)


def test_interval_is_deprecated(recwarn):
    with pytest.warns(DeprecationWarning, match="interval"):
        ReplicationController(object(), interval="50ms")  # type: ignore[arg-type]
