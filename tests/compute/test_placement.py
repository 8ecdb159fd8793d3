"""Placement decisions and requirement parsing, without a cluster."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmstore.compute.dispatch import Dispatcher, Job
from swarmstore.compute.placement import Placer, WorkerInfo, gpu_consumers
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
        ({"gpu": 1.5}, "a share of one GPU"),
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


# ---------------------------------------------------------------- workers
def test_worker_fit_counts_gpu_memory_per_gpu():
    four_small = WorkerInfo("w", 4, {"GPU": 4, "GPU_MEMORY": 64 * 2**30})
    assert four_small.memory_per_gpu == 16 * 2**30
    assert four_small.can_run({"GPU": 1, "GPU_MEMORY": 16 * 2**30})
    assert not four_small.can_run({"GPU": 1, "GPU_MEMORY": 40 * 2**30})  # no one GPU has it
    assert four_small.can_run({"GPU": 4, "GPU_MEMORY": 60 * 2**30})  # a gang spans GPUs
    assert not four_small.can_run({"GPU": 8})
    assert WorkerInfo("c", 2).can_run({}) and not WorkerInfo("c", 2).can_run({"GPU": 0.5})


# ---------------------------------------------------------------- Placer rules
def cluster(cpu: int = 2, gpu: int = 2, **kw) -> Placer:
    p = Placer(**kw)
    for i in range(cpu):
        p.add_worker(WorkerInfo(f"tcp://cpu{i}:1", 4))
    for i in range(gpu):
        p.add_worker(WorkerInfo(f"tcp://gpu{i}:1", 4, {"GPU": 1, "GPU_MEMORY": 16e9}))
    return p


def test_gpu_tasks_are_held():
    d = cluster().decide(Requirements(gpu=1))
    assert d.hold and d.workers is None and d.resources == {"GPU": 1.0}
    assert not d.unsatisfiable and not d.pinned


def test_cpu_tasks_are_held_on_a_cluster_with_gpu_workers_only():
    assert cluster().decide(None).hold
    assert not cluster(gpu=0).decide(None).hold  # CPU-only: stock placement and queue
    assert not cluster(keep_cpu_off_gpu=False).decide(None).hold
    d = cluster().decide(Requirements(cpu=2))  # a resource of its own: Dask checks it
    assert not d.hold and d.resources == {"CPU": 2.0}


def test_unsatisfiable_gpu_tasks_are_held_others_left_to_dask():
    p = cluster()
    d = p.decide(Requirements(gpu=2))
    assert d.unsatisfiable and d.hold and d.resources == {"GPU": 2.0}
    assert p.shortfall({"GPU": 2.0}) == (
        "it needs 2 GPUs on one worker; the most any worker has is 1"
    )
    d = p.decide(Requirements(gpu=1, gpu_memory=40 * 2**30))
    assert d.unsatisfiable and "per GPU; the largest GPU has" in p.shortfall(d.resources)
    assert cluster(gpu=0).shortfall({"GPU": 1}) == "no worker declares a GPU"


def test_cpu_resource_is_a_restriction():
    p = Placer()
    p.add_worker(WorkerInfo("tcp://small:1", 2, {"CPU": 2}))
    p.add_worker(WorkerInfo("tcp://large:1", 8, {"CPU": 8}))
    p.add_worker(WorkerInfo("tcp://gpu:1", 8, {"CPU": 8, "GPU": 1}))
    d = p.decide(Requirements(cpu=4))
    assert d.workers is None and d.resources == {"CPU": 4.0} and not d.hold
    assert p.capable(d.resources) == (("tcp://gpu:1", 8), ("tcp://large:1", 8))


def test_priorities():
    p = cluster()
    assert p.decide(Requirements(priority=10)).priority == 10
    assert p.decide(Requirements(priority=10, gpu=1)).priority == 10
    assert p.decide(None).priority is None


def test_chunk_affinity_is_rendezvous_owner():
    p = cluster(cpu=3, gpu=0)
    ring = Rendezvous([Member(a, weight=4.0) for a in p.workers])
    for i in range(50):
        d = p.decide(Requirements(chunk=f"x/c/{i}"))
        assert d.workers == {ring.owner(f"x/c/{i}").name} and d.pinned
    assert cluster(cpu=3, gpu=0, affinity=False).decide(Requirements(chunk="k")).workers is None


def test_chunk_ring_knows_workers_by_name():
    p = Placer()
    for i in range(3):
        p.add_worker(WorkerInfo(f"tcp://h:{100 + i}", 2, identity=f"name:w{i}"))
    owners = {f"c/{i}": p.owner(f"c/{i}") for i in range(60)}
    p.remove_worker("tcp://h:101")
    p.add_worker(WorkerInfo("tcp://h:999", 2, identity="name:w1"))  # restarted, new port
    moved = {k: p.owner(k) for k in owners}
    assert moved == {k: "tcp://h:999" if a == "tcp://h:101" else a for k, a in owners.items()}


def test_chunk_affinity_with_gpu_needs_stays_on_capable_workers():
    p = cluster(cpu=3, gpu=2)
    for i in range(30):
        d = p.decide(Requirements(chunk=f"x/c/{i}", gpu=1))
        assert next(iter(d.workers)).startswith("tcp://gpu") and d.pinned


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


def test_worker_resources_change():
    p = cluster(cpu=1, gpu=0)
    p.add_worker(WorkerInfo("tcp://cpu0:1", 4, {"GPU": 2}))  # declared GPUs later
    assert p.has_gpu_workers
    p.remove_worker("tcp://cpu0:1")
    assert not p.has_gpu_workers and not p.workers


def test_gpu_consumers():
    deps = {"g": ["f2"], "f2": ["f1", "old"], "f1": [], "x": [], "g2": ["f1", "f3"], "f3": []}
    assert gpu_consumers(["g", "g2"], deps.get) == {"f2": "g", "f1": "g", "f3": "g2"}
    assert gpu_consumers([], deps.get) == {}
    assert gpu_consumers(["g2", "g"], {**deps, "g": ["g2"]}.get) == {"f1": "g2", "f3": "g2"}


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


@settings(max_examples=150, deadline=None)
@given(
    workers=st.lists(resources, min_size=1, max_size=6),
    reqs=st.lists(requirements, min_size=1, max_size=12),
    busy=st.lists(st.integers(0, 3), min_size=6, max_size=6),
)
def test_never_placed_on_a_worker_lacking_resources(workers, reqs, busy):
    """Decisions and dispatches never name a worker that cannot give what a task needs."""
    p = Placer()
    infos = [WorkerInfo(f"tcp://w{i}:1", 2, r) for i, r in enumerate(workers)]
    for info in infos:
        p.add_worker(info)
    d = Dispatcher(p.workers)
    for i, req in enumerate(reqs):
        dec = p.decide(req)
        needs = req.resources()
        assert dict(dec.resources or {}) == needs
        capable = {w.address for w in infos if w.can_run(needs)}
        assert dec.unsatisfiable == (not capable and bool(needs))
        if dec.workers is not None:
            assert dec.workers <= capable or not needs
        if dec.hold:
            d.ready(Job(i, (0, 0, i), needs))
    load = {w.address: b for w, b in zip(infos, busy, strict=False)}
    for key, addr in d.plan(lambda a: load.get(a, 0), list(p.workers)):
        assert p.workers[addr].can_run(dict(reqs[key].resources()))
        used, mem = d.committed_gpu(addr)
        w = p.workers[addr]
        assert used <= w.gpus * 4 + 1e-9 and (not w.gpu_memory or mem <= w.gpu_memory * 4)
