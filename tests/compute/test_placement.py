"""Placement decisions and requirement parsing, without a cluster."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmstore.compute.placement import (
    FEEDER_BOOST,
    HOLD,
    GpuBalancer,
    Placer,
    WorkerInfo,
    gpu_ancestors,
)
from swarmstore.compute.requirements import Requirements, from_annotations, parse
from swarmstore.errors import PlacementError
from swarmstore.hashing import Member, Rendezvous


# ---------------------------------------------------------------- requirements
def test_parse_full():
    r = parse(
        {
            "gpu": 1,
            "gpu_memory": "8GiB",
            "cpu": 2,
            "priority": "high",
            "critical": True,
            "replicas": 2,
            "chunk": "a/c/0",
            "persist": True,
        }
    )
    assert r == Requirements(
        gpu=1.0,
        gpu_memory=8 * 2**30,
        cpu=2.0,
        priority=10,
        critical=True,
        replicas=2,
        chunk="a/c/0",
        extra={"persist": True},
    )
    assert r.resources() == {"GPU": 1.0, "GPU_MEMORY": 8.0 * 2**30, "CPU": 2.0}
    assert r.persist is True and r.is_gpu


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"gpus": 1}, "unknown swarm annotation key 'gpus'"),
        ({"gpu": "one"}, "gpu='one' must be a number"),
        ({"gpu": -1}, "must be >= 0"),
        ({"gpu": True}, "must be a number"),
        ({"gpu": float("nan")}, "must be a number"),
        ({"gpu_memory": "lots"}, "not a byte size"),
        ({"gpu_memory": 0}, "positive byte size"),
        ({"priority": "urgent"}, "one of \\['high', 'low', 'normal'\\]"),
        ({"priority": 1.5}, "integer or a name"),
        ({"critical": "yes"}, "must be a bool"),
        ({"replicas": 0}, "integer >= 1"),
        ({"replicas": 2.0}, "integer >= 1"),
        ({"chunk": 3}, "must be a string"),
        (["gpu"], "must be a dict"),
    ],
)
def test_parse_rejects(value, match):
    with pytest.raises(PlacementError, match=match):
        parse(value)
    with pytest.raises(ValueError):  # PlacementError is a ValueError for generic callers
        parse(value)


def test_gpu_memory_implies_a_gpu_and_names_map():
    assert parse({"gpu_memory": 10**9}).gpu == 1.0
    assert [parse({"priority": p}).priority for p in ("high", "NORMAL", "low", 7)] == [
        10,
        0,
        -10,
        7,
    ]
    assert parse({"cpu": 0}).cpu is None  # zero CPUs asks for nothing


def test_from_annotations_reads_stock_resources():
    assert from_annotations(None) is None
    assert from_annotations({"priority": 3}) is None
    assert from_annotations({"resources": {"MEM": 1}}) is None
    r = from_annotations({"resources": {"GPU": 2, "GPU_MEMORY": 4e9}})
    assert r is not None and r.gpu == 2.0 and r.gpu_memory == 4 * 10**9
    r = from_annotations({"swarm": {"critical": True}, "resources": {"GPU": 1}})
    assert r is not None and r.gpu == 1.0 and r.critical
    r = from_annotations({"swarm": {"gpu": 3}, "resources": {"GPU": 1}})
    assert r is not None and r.gpu == 3.0  # swarm wins


# ---------------------------------------------------------------- GPU balance
def test_balancer_by_slots_then_memory():
    b = GpuBalancer()
    b.add("one", {"GPU": 1, "GPU_MEMORY": 16e9})
    b.add("four", {"GPU": 4, "GPU_MEMORY": 64e9})
    b.add("cpu", {})  # ignored: no GPUs
    assert len(b) == 2
    picks = []
    for _ in range(10):
        addr = b.pick({"GPU": 1})
        picks.append(addr)
        b.assign(addr, {"GPU": 1})
    assert picks.count("one") == 2 and picks.count("four") == 8
    assert b.load("four") == (8.0, 0.0)
    for addr in picks:
        b.release(addr, {"GPU": 1})
    assert b.load("one") == (0.0, 0.0) and b.load("four") == (0.0, 0.0)


def test_balancer_respects_capacity_and_removal():
    b = GpuBalancer()
    b.add("small", {"GPU": 1, "GPU_MEMORY": 8e9})
    b.add("big", {"GPU": 2, "GPU_MEMORY": 80e9})
    assert b.pick({"GPU": 1, "GPU_MEMORY": 40e9}) == "big"
    assert b.pick({"GPU": 3}) is None
    b.remove("big")
    assert b.pick({"GPU": 1, "GPU_MEMORY": 40e9}) is None
    assert b.pick({"GPU": 1}) == "small"
    b.release("gone", {"GPU": 1})  # unknown worker: ignored


def test_balancer_heap_stays_bounded():
    b = GpuBalancer()
    for i in range(10):
        b.add(f"w{i}", {"GPU": 1})
    for _ in range(2000):
        addr = b.pick({"GPU": 1})
        b.assign(addr, {"GPU": 1})
        b.release(addr, {"GPU": 1})
    assert all(len(h) <= 4 * 10 + 64 + 1 for h in b._heaps.values())


# ---------------------------------------------------------------- Placer rules
def cluster(cpu: int = 2, gpu: int = 2, **kw) -> Placer:
    p = Placer(**kw)
    for i in range(cpu):
        p.add_worker(WorkerInfo(f"tcp://cpu{i}:1", 4))
    for i in range(gpu):
        p.add_worker(WorkerInfo(f"tcp://gpu{i}:1", 4, {"GPU": 1, "GPU_MEMORY": 16e9}))
    return p


def test_gpu_tasks_held_then_dispatched_by_free_slots():
    p = cluster()
    d = p.decide(Requirements(gpu=1))
    assert d.hold and d.workers == {HOLD} and not d.loose
    assert d.resources == {"GPU": 1.0} and d.priority == FEEDER_BOOST
    # one GPU each, prefetch 1: two tasks in flight per worker, then no room
    picks = [p.dispatch({"GPU": 1.0}) for _ in range(5)]
    assert sorted(picks[:4]) == ["tcp://gpu0:1"] * 2 + ["tcp://gpu1:1"] * 2
    assert picks[4] is None
    p.gpu.release("tcp://gpu1:1", {"GPU": 1.0})
    assert p.dispatch({"GPU": 1.0}) == "tcp://gpu1:1"


def test_dispatch_respects_memory_and_extra_needs():
    p = Placer(prefetch=0)
    p.add_worker(WorkerInfo("tcp://g:1", 4, {"GPU": 2, "GPU_MEMORY": 32e9}))
    p.add_worker(WorkerInfo("tcp://gc:1", 4, {"GPU": 2, "GPU_MEMORY": 32e9, "CPU": 4}))
    assert p.dispatch({"GPU": 1, "GPU_MEMORY": 20e9}) is not None
    assert p.dispatch({"GPU": 1, "GPU_MEMORY": 20e9}) is not None
    assert p.dispatch({"GPU": 1, "GPU_MEMORY": 20e9}) is None  # memory full on both
    assert p.dispatch({"GPU": 1, "CPU": 2}) == "tcp://gc:1"  # only one declares CPU


def test_unsatisfiable():
    d = cluster().decide(Requirements(gpu=2))
    assert d.unsatisfiable and d.workers is None and d.resources == {"GPU": 2.0}
    d = cluster().decide(Requirements(gpu=1, gpu_memory=10**12))
    assert d.unsatisfiable


def test_cpu_tasks_off_gpu_workers_unless_rootish():
    p = cluster()
    d = p.decide(None, rootish=False)
    assert d.workers == {"tcp://cpu0:1", "tcp://cpu1:1"} and d.loose
    assert p.decide(None, rootish=True).workers is None  # left to the root-task queue
    assert cluster(keep_cpu_off_gpu=False).decide(None, rootish=False).workers is None
    assert cluster(cpu=0).decide(None, rootish=False).workers is None  # no CPU pool
    assert cluster(gpu=0).decide(None, rootish=False).workers is None  # no GPU workers


def test_cpu_resource_is_a_restriction():
    p = Placer()
    p.add_worker(WorkerInfo("tcp://small:1", 2, {"CPU": 2}))
    p.add_worker(WorkerInfo("tcp://large:1", 8, {"CPU": 8}))
    p.add_worker(WorkerInfo("tcp://gpu:1", 8, {"CPU": 8, "GPU": 1}))
    d = p.decide(Requirements(cpu=4), rootish=False)
    # resources alone decide (Dask checks them); no loose pool that could bypass them
    assert d.workers is None and d.resources == {"CPU": 4.0}
    assert p.capable(d.resources) == (("tcp://gpu:1", 8), ("tcp://large:1", 8))


def test_priorities():
    p = cluster()
    assert p.decide(Requirements(priority=10)).priority == 10
    assert p.decide(Requirements(priority=10, gpu=1)).priority == 10 + FEEDER_BOOST
    assert p.decide(None, feeds_gpu=True, base_priority=3).priority == 3 + FEEDER_BOOST
    assert p.decide(None).priority is None


def test_chunk_affinity_is_rendezvous_owner():
    p = cluster(cpu=3, gpu=0)
    ring = Rendezvous([Member(a, weight=4.0) for a in p.workers])
    for i in range(50):
        d = p.decide(Requirements(chunk=f"x/c/{i}"))
        assert d.workers == {ring.owner(f"x/c/{i}").name}
        # strict: stealing must not move it off its cache (re-pinned if the owner leaves)
        assert not d.loose
    assert cluster(cpu=3, gpu=0, affinity=False).decide(Requirements(chunk="k")).workers is None


def test_chunk_affinity_with_gpu_needs_stays_on_capable_workers():
    p = cluster(cpu=3, gpu=2)
    for i in range(30):
        d = p.decide(Requirements(chunk=f"x/c/{i}", gpu=1))
        assert next(iter(d.workers)).startswith("tcp://gpu") and not d.loose


def test_affinity_moves_about_one_nth_on_membership_change():
    n, keys = 10, [f"arr/c/{i}" for i in range(4000)]
    p = cluster(cpu=n, gpu=0)
    before = {k: p.owner(k) for k in keys}
    p.remove_worker("tcp://cpu3:1")
    after = {k: p.owner(k) for k in keys}
    moved = sum(before[k] != after[k] for k in keys)
    assert moved == sum(v == "tcp://cpu3:1" for v in before.values())  # only the lost ones
    assert 0.5 / n < moved / len(keys) < 1.5 / n
    p.add_worker(WorkerInfo("tcp://new:1", 4))
    joined = {k: p.owner(k) for k in keys}
    moved = sum(after[k] != joined[k] for k in keys)
    assert all(joined[k] == "tcp://new:1" for k in keys if after[k] != joined[k])
    assert 0.5 / n < moved / len(keys) < 1.5 / n


def test_worker_resources_change_resets_gpu_shape():
    p = cluster(cpu=1, gpu=0)
    p.add_worker(WorkerInfo("tcp://cpu0:1", 4, {"GPU": 2}))  # declared GPUs later
    assert p.has_gpu_workers and not p.cpu_pool
    p.remove_worker("tcp://cpu0:1")
    assert not p.has_gpu_workers and not p.workers


def test_gpu_ancestors():
    deps = {"g": ["f2"], "f2": ["f1", "old"], "f1": [], "x": [], "g2": ["f1"]}
    assert gpu_ancestors(["g", "g2"], deps.get) == {"f1", "f2"}
    assert gpu_ancestors([], deps.get) == set()


# ---------------------------------------------------------------- the guarantee
resources = st.fixed_dictionaries(
    {},
    optional={
        "GPU": st.sampled_from([1, 2, 4]),
        "GPU_MEMORY": st.sampled_from([8e9, 16e9, 80e9]),
        "CPU": st.sampled_from([1, 2, 8]),
    },
)
requirements = st.builds(
    Requirements,
    gpu=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
    gpu_memory=st.sampled_from([None, 4 * 10**9, 20 * 10**9, 10**11]),
    cpu=st.sampled_from([None, 1.0, 4.0]),
    chunk=st.sampled_from([None, "a/0", "b/1"]),
)


@settings(max_examples=200, deadline=None)
@given(
    workers=st.lists(resources, min_size=1, max_size=6),
    reqs=st.lists(requirements, min_size=1, max_size=10),
    rootish=st.booleans(),
)
def test_never_placed_on_a_worker_lacking_resources(workers, reqs, rootish):
    p = Placer()
    infos = [WorkerInfo(f"tcp://w{i}:1", 2, r) for i, r in enumerate(workers)]
    for info in infos:
        p.add_worker(info)
    for req in reqs:
        d = p.decide(req, rootish=rootish)
        needs = req.resources()
        assert dict(d.resources or {}) == needs
        capable = {w.address for w in infos if w.can_run(needs)}
        assert d.unsatisfiable == (not capable and bool(needs))
        if d.hold:
            assert d.workers == {HOLD} and not d.loose
            addr = p.dispatch(needs)
            assert addr is None or addr in capable
        elif d.workers is not None:
            assert d.workers <= capable or not needs
            if needs:
                assert not d.loose  # loose restrictions would let Dask ignore resources
