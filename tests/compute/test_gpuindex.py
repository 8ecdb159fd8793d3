"""The GPU index picks the worker the plain scan picks, for any cluster and load.

:class:`~swarmstore.compute._gpuindex.GpuIndex` answers in O(shapes) what
:func:`~swarmstore.compute._choose.choose_gpu_worker` answers by scanning every capable
worker; the dispatcher uses the index. Hypothesis builds clusters of mixed GPU shapes, commits
and finishes random GPU work through the index, pauses some workers, and asks both.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmstore.compute._choose import choose_gpu_worker
from swarmstore.compute._gpuindex import GpuIndex
from swarmstore.compute._jobs import Committed, Job
from swarmstore.compute.dispatch import Dispatcher
from swarmstore.compute.placement import WorkerInfo

GiB = 2**30
SHAPES = [
    {"GPU": 1.0, "GPU_MEMORY": 16 * GiB},
    {"GPU": 2.0, "GPU_MEMORY": 32 * GiB},
    {"GPU": 1.0, "GPU_MEMORY": 80 * GiB},
    {"GPU": 4.0, "GPU_MEMORY": 4 * 40 * GiB},
    {"GPU": 1.0, "GPU_MEMORY": 16 * GiB, "FPGA": 1.0},
    {"GPU": 1.0},
]
NEEDS = [
    {"GPU": 1.0},
    {"GPU": 0.5},
    {"GPU": 0.5, "GPU_MEMORY": 6 * GiB},
    {"GPU": 1.0, "GPU_MEMORY": 40 * GiB},
    {"GPU": 2.0},
    {"GPU": 1.0, "FPGA": 1.0},
]

cluster = st.lists(st.sampled_from(range(len(SHAPES))), min_size=1, max_size=12)
work = st.lists(
    st.tuples(st.integers(0, 11), st.sampled_from(range(len(NEEDS))), st.sampled_from([0, 10])),
    max_size=30,
)


def _workers(shapes: list[int]) -> dict[str, WorkerInfo]:
    return {
        f"w{i}": WorkerInfo(f"w{i}", 2, SHAPES[s]) if s >= 0 else WorkerInfo(f"w{i}", 2)
        for i, s in enumerate(shapes)
    }


@settings(max_examples=300, deadline=None)
@given(
    cluster,
    work,
    st.sets(st.integers(0, 11)),
    st.sampled_from(range(len(NEEDS))),
    st.sampled_from([0, 10]),
    st.sampled_from([0.0, 1.0, 2.0]),
    st.integers(0, 30),
)
def test_the_index_chooses_as_the_scan_does(
    shapes, load, paused, need, priority, prefetch, finished
):
    ws = _workers([*shapes, -1])  # and a CPU worker
    index = GpuIndex(ws)
    committed: dict[str, list[Committed]] = {a: [] for a in ws}
    done = []
    for w, n, p in load:
        addr = f"w{w % len(shapes)}"
        if not ws[addr].can_run(NEEDS[n]):
            continue
        job = Job("x", (-p,), NEEDS[n])
        c = Committed(addr, job.gpu, job.gpu_memory, p, None)
        committed[addr].append(c)
        index.commit(c)
        done.append(c)
    for c in done[:finished]:  # some of it finished
        committed[c.worker].remove(c)
        index.finish(c)

    def busy(addr: str) -> int | None:
        return None if int(addr[1:]) in paused else 0

    job = Job("new", (-priority,), NEEDS[need])
    live = [w for w in ws.values() if w.is_gpu and w.can_run(job.needs) and busy(w.address) == 0]
    kw = {"prefetch": prefetch, "top_priority": 0.0, "now": 0.0}
    want = choose_gpu_worker(job, live, committed.__getitem__, **kw) if live else None
    assert index.choose(job, busy, committed.__getitem__, **kw) == want
    assert index.count(job.needs) == sum(w.is_gpu and w.can_run(job.needs) for w in ws.values())
    assert index.slots == sum(w.gpus for w in ws.values())


def test_membership_changes_rebuild_the_index():
    ws = _workers([0])
    d = Dispatcher(ws, gpu_prefetch=0.0)
    d.ready(Job("big", (0,), NEEDS[3]))
    assert d.plan(lambda a: 0, []) == []  # no 40 GiB GPU: parked
    ws["w9"] = WorkerInfo("w9", 1, SHAPES[2])
    d.membership_changed()
    assert d.gpu_slots == 2.0
    assert d.plan(lambda a: 0, []) == [("big", "w9")]
    del ws["w9"]
    d.membership_changed()
    assert d.gpu_slots == 1.0 and d.gpus.count(NEEDS[3]) == 0 and d.committed == {}


def test_finished_work_frees_its_slot_in_the_index():
    ws = _workers([0, 0])
    d = Dispatcher(ws, gpu_prefetch=0.0)
    for i in range(3):
        d.ready(Job(i, (0, i), NEEDS[0]))
    first = d.plan(lambda a: 0, [])
    assert sorted(a for _, a in first) == ["w0", "w1"]  # one each, the third waits
    d.done(first[0][0])
    assert d.plan(lambda a: 0, []) == [(2, first[0][1])]
