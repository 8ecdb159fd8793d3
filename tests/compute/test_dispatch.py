"""The dispatcher's policy, without a cluster: who runs what next."""

from __future__ import annotations

from collections import Counter

from swarmstore.compute.dispatch import Dispatcher, Job
from swarmstore.compute.placement import WorkerInfo

GiB = 2**30
GPU = {"GPU": 1.0}


def workers(*infos: WorkerInfo) -> dict[str, WorkerInfo]:
    return {w.address: w for w in infos}


def gpu_worker(addr: str, gpus: int = 1, mem: float = 16 * GiB, threads: int = 2) -> WorkerInfo:
    return WorkerInfo(addr, threads, {"GPU": gpus, "GPU_MEMORY": gpus * mem})


def idle(addr: str) -> int:
    return 0


def job(key: object, needs: dict | None = None, prio: int = 0, order: int = 0, **kw) -> Job:
    return Job(key, (-prio, 0, order), needs or {}, **kw)


def where(picks: list[tuple[object, str]]) -> Counter[str]:
    return Counter(addr for _, addr in picks)


# ---------------------------------------------------------------- GPUs
def test_gpu_jobs_go_by_free_slots_with_prefetch():
    ws = workers(gpu_worker("one"), gpu_worker("four", gpus=4))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    for i in range(20):
        d.ready(job(i, GPU, order=i))
    picks = d.plan(idle, [])
    assert where(picks) == {"one": 2, "four": 8}  # 1 + 1 prefetched, 4 + 4 prefetched
    assert d.committed_gpu("four") == (8.0, 0.0) and d.ready_gpu() == 10
    d.done(picks[0][0])
    assert len(d.plan(idle, [])) == 1


def test_free_gpu_memory_counts_not_declared_totals():
    ws = workers(gpu_worker("g", gpus=2, mem=16 * GiB))  # 2 GPUs, 32 GiB
    d = Dispatcher(ws, gpu_prefetch=0.0)
    for i in range(3):
        d.ready(job(i, {"GPU": 1.0, "GPU_MEMORY": 12 * GiB}, order=i))
    assert len(d.plan(idle, [])) == 2  # 24 GiB of 32: a third would need 36
    d.ready(job("small", {"GPU": 0.5, "GPU_MEMORY": 1 * GiB}))
    assert d.plan(idle, []) == []  # no GPU share left either


def test_big_gpu_stays_for_the_jobs_only_it_fits():
    ws = workers(gpu_worker("big", mem=80 * GiB), gpu_worker("small"), gpu_worker("small2"))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    for i in range(10):
        d.ready(job(f"train-{i}", {"GPU": 1.0, "GPU_MEMORY": 40 * GiB}, prio=10, order=i))
    for i in range(10):
        d.ready(job(f"infer-{i}", {"GPU": 1.0, "GPU_MEMORY": 8 * GiB}, order=i))
    picks = dict(d.plan(idle, []))
    on_big = [k for k, a in picks.items() if a == "big"]
    assert sorted(on_big) == ["train-0", "train-1"]  # its slot and its prefetch room
    assert all(a != "big" for k, a in picks.items() if k.startswith("infer"))
    assert where(picks.items())["small"] == where(picks.items())["small2"] == 2


def test_a_job_that_fits_small_gpus_takes_a_big_free_slot_but_not_its_prefetch():
    ws = workers(gpu_worker("big", mem=80 * GiB), gpu_worker("small"))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    for i in range(6):
        d.ready(job(f"infer-{i}", {"GPU": 1.0, "GPU_MEMORY": 8 * GiB}, order=i))
    assert where(d.plan(idle, [])) == {"small": 2, "big": 1}  # no GPU idles


def test_scarce_jobs_first_among_equals():
    ws = workers(gpu_worker("big", mem=80 * GiB), gpu_worker("small"))
    d = Dispatcher(ws, gpu_prefetch=0.0)
    d.ready(job("infer", {"GPU": 1.0, "GPU_MEMORY": 8 * GiB}, order=0))
    d.ready(job("train", {"GPU": 1.0, "GPU_MEMORY": 40 * GiB}, order=1))
    assert dict(d.plan(idle, [])) == {"train": "big", "infer": "small"}


def test_an_urgent_gpu_job_goes_ahead_of_prefetched_work():
    ws = workers(gpu_worker("a"), gpu_worker("b"))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    for i in range(8):
        d.ready(job(i, GPU, order=i))
    assert len(d.plan(idle, [])) == 4  # full: 2 per worker
    for i in range(3):
        d.ready(job(f"urgent-{i}", GPU, prio=10, order=i))
    urgent = d.plan(idle, [])
    assert len(urgent) == 3 and len(set(where(urgent))) == 2  # spread, ahead of the rest
    d.ready(job("normal", GPU, order=99))
    assert d.plan(idle, []) == []  # normal work never overflows


def test_prefetch_room_waits_while_more_urgent_gpu_work_is_coming():
    ws = workers(gpu_worker("a"))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    d.gpu_top_priority = 10  # an urgent GPU task exists, not ready yet
    for i in range(3):
        d.ready(job(i, GPU, order=i))
    assert len(d.plan(idle, [])) == 1  # the free slot only


def test_gangs_take_whole_gpus_at_once_and_never_prefetch():
    ws = workers(gpu_worker("two", gpus=2), gpu_worker("one"))
    d = Dispatcher(ws, gpu_prefetch=1.0)
    d.ready(job("gang", {"GPU": 2.0}))
    d.ready(job("single", GPU, order=1))
    assert dict(d.plan(idle, [])) == {"gang": "two", "single": "one"}
    d.ready(job("gang2", {"GPU": 2.0}, order=2))
    assert d.plan(idle, []) == []  # "two" is busy: the gang waits whole, not in prefetch
    d.done("gang")
    assert d.plan(idle, []) == [("gang2", "two")]


def test_fractional_gpus_share_a_gpu():
    ws = workers(gpu_worker("g", threads=2))
    d = Dispatcher(ws, gpu_prefetch=0.0)
    for i in range(4):
        d.ready(job(i, {"GPU": 0.5}, order=i))
    assert len(d.plan(idle, [])) == 2


def test_gpu_jobs_no_worker_can_run_park_until_one_joins():
    ws = workers(gpu_worker("small"))
    d = Dispatcher(ws)
    d.ready(job("big", {"GPU": 1.0, "GPU_MEMORY": 40 * GiB}))
    assert d.plan(idle, []) == []
    ws["big"] = gpu_worker("big", mem=80 * GiB)
    d.membership_changed()
    assert d.plan(idle, []) == [("big", "big")]


def test_a_paused_worker_gets_nothing():
    ws = workers(gpu_worker("a"), WorkerInfo("c", 2))
    d = Dispatcher(ws)
    d.ready(job("g", GPU))
    d.ready(job("c", order=1))
    assert d.plan(lambda addr: None, list(ws)) == []


# ---------------------------------------------------------------- threads
def test_heterogeneous_workers_fill_in_proportion_to_threads():
    ws = workers(WorkerInfo("one", 1), WorkerInfo("two", 2), WorkerInfo("four", 4))
    d = Dispatcher(ws, saturation=1.0)
    for i in range(20):
        d.ready(job(i, order=i))
    assert where(d.plan(idle, list(ws))) == {"one": 1, "two": 2, "four": 4}
    d = Dispatcher(ws, saturation=1.1)  # as Dask's worker-saturation: one waiting behind
    for i in range(20):
        d.ready(job(i, order=i))
    assert where(d.plan(idle, list(ws))) == {"one": 2, "two": 3, "four": 5}


def test_cpu_jobs_stay_off_gpu_workers_while_a_cpu_worker_runs():
    ws = workers(WorkerInfo("cpu", 2), gpu_worker("gpu", threads=3))
    for outstanding in (0, 1):  # with GPU work coming or not, a full CPU worker waits
        d = Dispatcher(ws, saturation=1.0, share_gpu_threads=False)
        for i in range(10):
            d.ready(job(i, order=i))
        d.gpu_outstanding = outstanding
        assert where(d.plan(idle, list(ws))) == {"cpu": 2}
    d.ready(job("urgent", prio=10, order=99))
    assert where(d.plan(lambda addr: 2 if addr == "cpu" else 0, list(ws))) == {"cpu": 1}

    def cpu_paused(addr: str) -> int | None:
        return None if addr == "cpu" else 0

    d = Dispatcher(ws, saturation=1.0, share_gpu_threads=False)  # no CPU worker: the GPU one
    for i in range(10):
        d.ready(job(i, order=i))
    assert where(d.plan(cpu_paused, list(ws))) == {"gpu": 3}


def test_gpu_workers_lend_cpu_jobs_only_the_threads_their_gpus_do_not_need():
    ws = workers(WorkerInfo("cpu", 2), gpu_worker("gpu", threads=3), gpu_worker("g1", threads=1))
    for outstanding, expected in ((1, {"cpu": 2, "gpu": 2}), (0, {"cpu": 2, "gpu": 3, "g1": 1})):
        d = Dispatcher(ws, saturation=1.0)  # the default; no GPU work known: every thread
        for i in range(10):
            d.ready(job(i, order=i))
        d.gpu_outstanding = outstanding
        assert where(d.plan(idle, list(ws))) == expected
    d = Dispatcher(ws, saturation=1.0, share_gpu_threads=True)
    d.ready(job("g", GPU))
    for i in range(10):
        d.ready(job(i, order=i))
    picks = d.plan(idle, list(ws))  # a ready GPU job is outstanding GPU work by itself
    # the GPU task and its prefetched peers never count against the lent threads
    assert dict(picks)["g"] in ("gpu", "g1")
    assert where(p for p in picks if p[0] != "g") == {"cpu": 2, "gpu": 2}
    # half-GPU tasks: two run at once on one GPU, so two threads stay theirs
    d = Dispatcher(ws, saturation=1.0, share_gpu_threads=True)
    for i in range(10):
        d.ready(job(i, order=i))
    d.gpu_outstanding, d.gpu_min_share = 1, 0.5
    assert where(d.plan(idle, list(ws))) == {"cpu": 2, "gpu": 1}
    # an urgent CPU job overflows onto full CPU workers, never into a GPU worker's kept thread
    d.ready(job("urgent", prio=10, order=99))
    assert dict(d.plan(lambda a: {"cpu": 2, "gpu": 1}.get(a, 0), list(ws))) == {"urgent": "cpu"}


def test_a_lone_gpu_worker_keeps_threads_for_gpu_work_and_one_for_cpu_work():
    for threads, share, expected in ((3, 1.0, 2), (3, 0.5, 1), (2, 0.25, 1), (1, 1.0, 1)):
        ws = workers(gpu_worker("gpu", threads=threads))
        d = Dispatcher(ws, saturation=1.0)
        for i in range(10):
            d.ready(job(i, order=i))
        d.gpu_outstanding, d.gpu_min_share = 1, share
        assert where(d.plan(idle, list(ws))) == {"gpu": expected}, (threads, share)
    d = Dispatcher(workers(gpu_worker("gpu", threads=3)), saturation=1.0)
    for i in range(10):
        d.ready(job(i, order=i))
    assert where(d.plan(idle, ["gpu"])) == {"gpu": 3}  # no GPU work: all threads


def test_cpu_jobs_prefer_cpu_workers():
    ws = workers(gpu_worker("gpu", threads=4), WorkerInfo("cpu", 4))
    d = Dispatcher(ws, saturation=1.0)
    for i in range(3):
        d.ready(job(i, order=i))
    assert where(d.plan(idle, list(ws))) == {"cpu": 3}


def test_jobs_run_in_rank_order_and_go_where_their_inputs_are():
    ws = workers(WorkerInfo("a", 1), WorkerInfo("b", 1))
    d = Dispatcher(ws, saturation=1.0)
    d.ready(job("late", order=5))
    d.ready(job("early", order=1))
    d.ready(job("urgent", prio=5, order=9))
    assert {k for k, _ in d.plan(idle, list(ws))} == {"urgent", "early"}
    d = Dispatcher(ws, saturation=1.0)
    d.ready(job("x", order=1))
    d.ready(job("local", order=2, home="b"))
    assert dict(d.plan(idle, ["b", "a"])) == {"local": "b", "x": "a"}


def test_an_urgent_cpu_job_goes_ahead_on_a_full_worker():
    ws = workers(WorkerInfo("a", 2), WorkerInfo("b", 2))
    d = Dispatcher(ws, saturation=1.0)
    for i in range(4):
        d.ready(job(i, order=i))
    assert len(d.plan(idle, list(ws))) == 4

    def full(addr: str) -> int:
        return 2

    for i in range(6):
        d.ready(job(f"u{i}", prio=10, order=i))
    urgent = d.plan(full, list(ws))
    assert where(urgent) == {"a": 2, "b": 2}  # one turn of each thread, then they wait
    d.ready(job("normal", order=9))
    assert d.plan(full, list(ws)) == []


# ---------------------------------------------------------------- feeding GPUs
def feeders(d: Dispatcher, consumers: int, per: int = 1, start: int = 0) -> None:
    for g in range(consumers):
        for f in range(per):
            d.ready(job(f"f{g}.{f}", order=start + g * per + f, consumer=f"g{g}"))


def test_feeders_are_throttled_to_what_keeps_the_gpus_busy():
    ws = workers(WorkerInfo("cpu", 40), gpu_worker("gpu"))
    d = Dispatcher(ws, gpu_prefetch=1.0, saturation=1.0)
    d.gpu_outstanding = 100
    feeders(d, 30, per=2)
    picks = d.plan(idle, ["cpu"])
    fed = {k.split(".")[0] for k, _ in picks}
    assert len(fed) == d.pipe_limit < 30 and len(picks) == 2 * d.pipe_limit  # whole consumers
    assert d.plan(idle, ["cpu"]) == []  # full, and its feeders are in flight
    d.ready(job("g0", GPU))
    d.plan(idle, [])
    feeders(d, 1, start=100)  # a feeder of a consumer already in the pipe always passes
    assert d.plan(idle, ["cpu"]) == [("f0.0", "cpu")]
    d.done("g0")
    d.gpu_task_finished("g0")
    assert len(d.plan(idle, ["cpu"])) == 2  # one consumer left: the next one is admitted


def test_the_valve_lets_work_through_when_no_gpu_work_can_drain_the_pipe():
    ws = workers(WorkerInfo("cpu", 40), gpu_worker("gpu"))
    d = Dispatcher(ws, saturation=1.0)
    feeders(d, d.pipe_limit + 5)
    first = d.plan(idle, ["cpu"])
    assert len(first) == d.pipe_limit
    for key, _ in first:  # the feeders finish but no GPU job is ready or running
        d.done(key)
    assert len(d.plan(idle, ["cpu"])) == 1  # one at a time while nothing else moves


def test_starving_gpus_get_their_feeders_first():
    ws = workers(WorkerInfo("cpu", 1), gpu_worker("gpu", threads=1))
    d = Dispatcher(ws, saturation=1.0)
    d.gpu_outstanding = 1
    d.ready(job("other", order=1))
    d.ready(job("feeder", order=2, consumer="g"))
    assert d.plan(idle, ["cpu"]) == [("feeder", "cpu")]


def test_pipe_limit_follows_expected_durations():
    ws = workers(gpu_worker("gpu"))
    short, long_ = Dispatcher(ws), Dispatcher(ws)
    for i in range(30):
        short.ready(job(f"s{i}", order=i, consumer="g", duration=0.1))
        long_.ready(job(f"l{i}", order=i, consumer="g", duration=2.0))
        short.ready(job(f"gs{i}", GPU, order=i, duration=1.0))
        long_.ready(job(f"gl{i}", GPU, order=i, duration=1.0))
    assert long_.pipe_limit > short.pipe_limit


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_urgent_job_goes_where_a_thread_is_expected_to_free_first():
    ws = workers(WorkerInfo("a", 2), WorkerInfo("b", 2))
    clock = Clock()
    d = Dispatcher(ws, saturation=1.0, clock=clock)
    for i, seconds in enumerate((10.0, 10.0, 1.0, 1.0)):
        d.ready(job(i, order=i, duration=seconds))
    first = dict(d.plan(idle, list(ws)))
    short = first[2]  # the worker running the two 1 s jobs
    assert first[3] == short and first[0] == first[1] != short
    clock.now = 0.5

    def full(addr: str) -> int:
        return 2

    d.ready(job("u0", prio=10, order=10))
    assert d.plan(full, list(ws)) == [("u0", short)]
    d.ready(job("u1", prio=10, order=11))  # one turn each: the other worker next
    assert d.plan(full, list(ws)) == [("u1", first[0])]


def test_an_urgent_gpu_job_goes_where_a_gpu_is_expected_to_free_first():
    ws = workers(gpu_worker("g1"), gpu_worker("g2"))
    clock = Clock()
    d = Dispatcher(ws, gpu_prefetch=1.0, clock=clock)
    for i, seconds in enumerate((9.0, 2.0, 9.0, 2.0)):
        d.ready(job(i, GPU, order=i, duration=seconds))
    # a free slot each, then prefetch room each: g1 holds 9 s of work, g2 2 s
    assert dict(d.plan(idle, list(ws))) == {0: "g1", 1: "g2", 2: "g1", 3: "g2"}
    clock.now = 1.0
    d.ready(job("urgent", GPU, prio=10, order=10, duration=1.0))
    assert d.plan(idle, list(ws)) == [("urgent", "g2")]  # both full: g2's GPU frees first


def test_an_urgent_feeder_is_not_throttled_by_a_pipe_full_of_other_work():
    ws = workers(WorkerInfo("cpu", 40), gpu_worker("gpu"))
    d = Dispatcher(ws, gpu_prefetch=1.0, saturation=1.0)
    d.gpu_outstanding = 100
    feeders(d, 30)
    assert len(d.plan(idle, ["cpu"])) == d.pipe_limit  # the pipe is full
    for g in range(30):  # more of the same rank: they wait
        d.ready(job(f"more{g}", order=100 + g, consumer=f"h{g}"))
    assert d.plan(idle, ["cpu"]) == []
    for g in range(3):  # an urgent job's feeders, one GPU task each
        d.ready(job(f"u{g}", prio=10, order=g, consumer=f"ug{g}"))
    assert sorted(k for k, _ in d.plan(idle, ["cpu"])) == ["u0", "u1", "u2"]


def test_the_pipe_covers_the_other_work_that_holds_the_feeders_threads():
    ws = workers(WorkerInfo("cpu", 2), gpu_worker("gpu"))
    alone, beside = Dispatcher(ws), Dispatcher(ws)
    for d in (alone, beside):
        for i in range(10):
            d.ready(job(f"f{i}", order=i, consumer=f"g{i}", duration=1.0))
            d.ready(job(f"g{i}", GPU, order=i, duration=1.0))
    for i in range(10):  # long CPU work that a thread takes while the pipe is full
        beside.ready(job(f"o{i}", order=50 + i, duration=4.0))
    assert beside.pipe_limit > alone.pipe_limit


def test_a_starved_gpu_worker_lends_its_kept_thread_to_feeders_only():
    ws = workers(WorkerInfo("cpu", 1), gpu_worker("gpu", threads=1))

    def cpu_full(addr: str) -> int:
        return 1 if addr == "cpu" else 0

    d = Dispatcher(ws, saturation=1.0)
    d.gpu_outstanding = 1  # a GPU task waits for its inputs: none is ready
    d.ready(job("other", order=1))
    d.ready(job("feeder", order=2, consumer="g"))
    assert d.plan(cpu_full, list(ws)) == [("feeder", "gpu")]  # never "other"
    assert d.plan(lambda a: 1, list(ws)) == []  # its one thread is now busy
    # a GPU job ready anywhere, or GPU work on the worker: the thread stays the GPU's
    for setup in ("ready", "committed"):
        d = Dispatcher(ws, saturation=1.0)
        d.gpu_outstanding = 1
        if setup == "ready":
            d.ready(job("g2", {"GPU": 1.0, "X": 1.0}))  # ready, fits no worker now
        else:
            d.ready(job("g2", GPU))
            assert d.plan(cpu_full, []) == [("g2", "gpu")]
        d.ready(job("feeder", order=2, consumer="g"))
        running = {"cpu": 1, "gpu": 1 if setup == "committed" else 0}
        assert d.plan(running.__getitem__, list(ws)) == []
    strict = Dispatcher(ws, saturation=1.0, share_gpu_threads=False)
    strict.gpu_outstanding = 1
    strict.ready(job("feeder", order=2, consumer="g"))
    assert strict.plan(cpu_full, list(ws)) == []


def test_urgent_gpu_work_only_a_bigger_gpu_fits_holds_no_prefetch_room_back():
    big = WorkerInfo("big", 2, {"GPU": 1, "GPU_MEMORY": 80 * GiB})
    ws = workers(big, gpu_worker("small"))
    infer = {"GPU": 1.0, "GPU_MEMORY": 8.0 * GiB}
    for top_for, expected in ((None, 1), (lambda mem: 10 if mem >= 40 * GiB else 0, 2)):
        d = Dispatcher(ws, gpu_prefetch=1.0)
        d.gpu_top_priority = 10  # urgent train tasks (40 GiB) are outstanding
        d.gpu_top_priority_for = top_for
        for i in range(4):
            d.ready(job(f"infer{i}", infer, order=i))
        # the small GPU takes one free slot; its prefetch room waits for the urgent work
        # only when that work could run there
        assert where(d.plan(idle, []))["small"] == expected


# ---------------------------------------------------------------- GPU reservations
def _urgent_on_its_way(clock: list[float]) -> Dispatcher:
    """One GPU worker, one free GPU; an urgent GPU task's feeder runs (ready in 1 s)."""
    ws = workers(gpu_worker("g"), WorkerInfo("c", 2))
    d = Dispatcher(ws, gpu_prefetch=0.0, clock=lambda: clock[0])
    d.ready(job("feed", prio=10, consumer="urgent-gpu", duration=1.0))
    assert d.plan(idle, ["c"]) == [("feed", "c")]
    return d


def test_a_free_gpu_is_kept_for_an_urgent_gpu_task_on_its_way():
    clock = [0.0]
    d = _urgent_on_its_way(clock)
    d.ready(job("bulk", GPU, duration=5.0))  # would hold the GPU past the urgent task's arrival
    assert d.plan(idle, ["c"]) == []
    clock[0] = 1.0
    d.done("feed")
    d.ready(job("urgent-gpu", GPU, prio=10, duration=2.0))
    assert d.plan(idle, ["c"]) == [("urgent-gpu", "g")]  # the kept GPU: no wait behind bulk
    d.done("urgent-gpu")
    d.gpu_task_finished("urgent-gpu")
    assert d.plan(idle, ["c"]) == [("bulk", "g")]  # nothing on its way: bulk runs


def test_work_that_finishes_before_the_urgent_task_arrives_backfills_the_kept_gpu():
    clock = [0.0]
    d = _urgent_on_its_way(clock)
    d.ready(job("short", GPU, duration=0.5))
    assert d.plan(idle, ["c"]) == [("short", "g")]


def test_work_of_equal_priority_is_not_held_back():
    clock = [0.0]
    d = _urgent_on_its_way(clock)
    d.ready(job("peer", GPU, prio=10, duration=5.0))
    assert d.plan(idle, ["c"]) == [("peer", "g")]
