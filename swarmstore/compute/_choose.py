"""Which worker takes a job now: GPU slots and memory, best fit, urgent jobs ahead of others.

Pure functions over the workers as declared and the work committed to each (see
:class:`~swarmstore.compute.dispatch.Dispatcher` for the policy they implement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmstore.compute._jobs import Committed

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping

    from swarmstore.compute._jobs import Job
    from swarmstore.compute.placement import WorkerInfo

__all__ = [
    "better_entry",
    "choose_gang",
    "choose_gpu_worker",
    "choose_urgent_worker",
    "mem_ok",
    "overflow_worker",
]


def _load(cs: Iterable[Committed]) -> tuple[float, float]:
    cs = list(cs)
    return sum(c.gpu for c in cs), sum(c.gpu_memory for c in cs)


def choose_gpu_worker(
    job: Job,
    capable: list[WorkerInfo],
    committed: Callable[[str], Iterable[Committed]],
    *,
    prefetch: float,
    top_priority: float | Callable[[float], float],
    now: float = 0.0,
    overflow: bool = True,
) -> str | None:
    """The worker ``job`` goes to now among ``capable`` (running, able to run it), or None.

    A free slot before prefetch room, the smallest GPU that fits, then the least loaded.
    Prefetch room is for jobs that need this size of GPU, and waits while more urgent GPU
    work that this GPU could run is on its way (it would wait behind what is prefetched
    now; ``top_priority`` is that priority, or a function of the GPU's memory giving it:
    work only a bigger GPU fits holds no prefetch room back here). ``overflow``: an
    urgent job may queue ahead of lower-ranked work on a full worker (:func:`overflow_worker`).
    """
    smallest = min(w.memory_per_gpu for w in capable)
    best: tuple[Any, ...] | None = None
    choice = None
    for w in capable:
        used, mem = _load(committed(w.address))
        free = used + job.gpu <= w.gpus + 1e-9 and mem_ok(w, mem, job, 1.0)
        bigger = w.memory_per_gpu > smallest * 1.001
        top = top_priority(w.memory_per_gpu) if callable(top_priority) else top_priority
        allowed = not (bigger or job.gpu > 1 or job.priority < top)
        room = 1.0 + prefetch if allowed else 1.0
        fits = used + job.gpu <= w.gpus * room + 1e-9 and mem_ok(w, mem, job, room)
        if not (free or fits):
            continue
        score = (not free, w.memory_per_gpu, used / w.gpus)
        if best is None or score < best:
            best, choice = score, w.address
    if choice is None and overflow:
        return overflow_worker(job, capable, committed, prefetch, now)
    return choice


def choose_gang(
    members: list[Job],
    capable_of: Callable[[Job], list[WorkerInfo]],
    committed: Callable[[str], Iterable[Committed]],
    now: float = 0.0,
) -> list[tuple[Job, str]] | None:
    """A free GPU slot for every member of a gang at once, across workers, or None.

    Like a Ray placement group: no member takes prefetch room or queues ahead of other
    work (it would wait there while the others run), and none goes unless all fit now, so
    a gang never holds some GPUs while it waits for the rest.
    """
    tentative: dict[str, list[Committed]] = {}

    def seen(addr: str) -> list[Committed]:
        return [*committed(addr), *tentative.get(addr, ())]

    out = []
    for m in members:
        capable = capable_of(m)
        if not capable:
            return None
        addr = choose_gpu_worker(
            m, capable, seen, prefetch=0.0, top_priority=m.priority, now=now, overflow=False
        )
        if addr is None:
            return None
        c = Committed(addr, m.gpu, m.gpu_memory, m.priority, None)
        tentative.setdefault(addr, []).append(c)
        out.append((m, addr))
    return out


def overflow_worker(
    job: Job,
    capable: list[WorkerInfo],
    committed: Callable[[str], Iterable[Committed]],
    prefetch: float,
    now: float,
) -> str | None:
    """An urgent job goes ahead of lower-ranked work waiting on a full worker.

    Up to a worker's room of such work may queue there (the worker runs it by priority,
    before what it prefetched); the worker whose GPU is expected to free first wins (from
    the prefix averages of what runs there), then the least loaded.
    """
    if job.gpu > 1:
        return None
    room = 1.0 + prefetch
    best = None
    for w in capable:
        cs = [c for c in committed(w.address) if c.gpu]
        if not any(c.priority < job.priority for c in cs):
            continue  # nothing of lower rank to go ahead of
        ahead = sum(c.gpu for c in cs if c.priority >= job.priority)
        used = sum(c.gpu for c in cs)
        if ahead + job.gpu > w.gpus * room + 1e-9 or used + job.gpu > 2 * w.gpus * room:
            continue
        score = (ahead, _frees_at(cs, max(1, round(w.gpus)), now), used)
        if best is None or score < best[0]:
            best = (score, w.address)
    return None if best is None else best[1]


def _frees_at(cs: Iterable[Committed], slots: int, now: float) -> float:
    """When the first of ``slots`` slots running ``cs`` (earliest first) is expected to free."""
    ends = sorted(max(c.until, now) for c in cs)
    return ends[0] if len(ends) >= slots else now


def mem_ok(w: WorkerInfo, used: float, job: Job, room: float) -> bool:
    if not job.gpu_memory or not w.gpu_memory:
        return True
    return used + job.gpu_memory <= w.gpu_memory * room + 1e-6


def choose_urgent_worker(
    job: Job,
    free: Mapping[str, int],
    workers: Mapping[str, WorkerInfo],
    committed: Callable[[str], Iterable[Committed]],
    now: float = 0.0,
) -> str | None:
    """A full worker where the CPU ``job`` goes ahead of lower-ranked work queued there:
    one thread's turn each; CPU-only workers, the least queued, then the worker whose
    thread is expected to free first (prefix averages of what runs there) first."""
    best = None
    for addr, n in free.items():
        w = workers[addr]
        cs = [c for c in committed(addr) if not c.gpu]
        ahead = sum(1 for c in cs if c.priority >= job.priority)
        if ahead >= w.nthreads:
            continue
        frees = _frees_at(cs, w.nthreads, now)
        score = (w.is_gpu, ahead / w.nthreads, frees, -n / w.nthreads)
        if best is None or score < best[0]:
            best = (score, addr)
    return None if best is None else best[1]


def better_entry(
    a: tuple[Any, int, Hashable] | None,
    b: tuple[Any, int, Hashable] | None,
    *,
    prefer_first: bool,
) -> tuple[Any, int, Hashable] | None:
    """The entry to run first: ``a`` wins ties of user priority when ``prefer_first``."""
    if a is None or b is None:
        return a if b is None else b
    if a[0][:1] != b[0][:1]:  # user priority dominates
        return a if a[0][:1] < b[0][:1] else b
    if prefer_first:
        return a
    return a if a[0] <= b[0] else b
