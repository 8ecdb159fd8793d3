"""Dispatch held tasks to the workers that have room for them: list scheduling, plain objects.

SwarmPlugin holds GPU tasks always, and every CPU task on a cluster with GPU workers
(:mod:`~swarmstore.compute.placement`). Once a held task is ready the plugin hands it here as a
:class:`Job`; :meth:`Dispatcher.plan` says which ready job goes to which worker *now*, and
the plugin applies the answer (:mod:`swarmstore.compute._apply`). Nothing here touches Dask.

The policy (``docs/compute.md`` justifies it):

- **Ranks.** Dask priority order (user ``priority=``, graph generation, ``dask.order``, which
  follows each graph's critical path while keeping memory low).
- **GPU work on the workers that alone can run it.** Scarce GPU jobs first among equals;
  each to *free* GPU slots and memory (not declared totals): a free slot before prefetch
  room, the smallest GPU that fits, the least loaded (:mod:`._choose`). ``gpu_prefetch``
  GPUs' worth wait behind the running ones, so no GPU idles between tasks.
- **Threads.** CPU jobs take free task slots, ``worker-saturation`` times the threads, so
  heterogeneous workers fill in proportion; GPU workers lend only the threads their GPU
  work does not need (:mod:`._threads`), and the rest to feeders of GPU work while their
  GPU waits for inputs (no GPU job ready, none on the worker). A job whose inputs mostly
  sit on one worker goes there when it has room.
- **Urgent jobs.** A job of higher user priority than all the work committed to a worker may
  go there beyond its slots (one turn per thread or GPU) and runs next, on the worker
  whose thread or GPU is expected to free first (task-prefix averages). While its feeders
  run, a free GPU is kept for each of its GPU tasks, backfilled only by work expected to
  finish before that task is ready (:mod:`._reserve`).
- **Feeding GPUs without flooding memory** (dask/distributed#9164). A CPU job that feeds a
  GPU task is admitted only while fewer than :attr:`Dispatcher.pipe_limit` GPU tasks of at
  least its user priority are being fed or wait, unless its own GPU task is among them (so
  an urgent job's feeders never wait behind a full pipe of others); when it runs short,
  feeders go first among equals (:mod:`._pipe` sizes it).
"""

from __future__ import annotations

import heapq
import time
from typing import TYPE_CHECKING, Any

from swarmstore.compute._choose import better_entry, choose_gang, choose_urgent_worker
from swarmstore.compute._gpuindex import GpuIndex
from swarmstore.compute._jobs import Committed, Job, is_gpu
from swarmstore.compute._pipe import FeedPipe
from swarmstore.compute._queues import ReadyQueues
from swarmstore.compute._reserve import Reservations
from swarmstore.compute._threads import ThreadPolicy, free_cpu_slots, starved_feeder_threads

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping

    from swarmstore.compute.placement import WorkerInfo

__all__ = ["Dispatcher", "Job"]

_SCAN = 64  # jobs looked at past the head of a queue before giving up on a worker


class Dispatcher:
    """Ready jobs, the work committed to each worker, and the choice of who runs what next.

    Parameters
    ----------
    workers : mapping of address to WorkerInfo
        The cluster as declared (the placer's live mapping).
    gpu_prefetch : float
        GPU work waiting on a GPU worker beyond its GPUs, in multiples of its GPUs.
    saturation : float
        CPU jobs in flight per thread, as Dask's ``distributed.scheduler.worker-saturation``
        (1.1: a worker of 2 threads holds 3, so a thread that frees starts the next job
        without a round trip to the scheduler); ``inf``: twice the threads.
    lookahead : float
        Extra GPU tasks' worth of feeding the pipe keeps, per GPU, beyond the time ratio.
    share_gpu_threads : bool
        GPU workers lend CPU jobs the threads their GPU tasks do not need.
    clock : callable
        Seconds, for when committed work is expected to finish (urgent jobs' choice).

    Examples
    --------
    >>> from swarmstore.compute.placement import WorkerInfo
    >>> ws = {"c": WorkerInfo("c", 2), "g": WorkerInfo("g", 1, {"GPU": 1})}
    >>> d = Dispatcher(ws, gpu_prefetch=0)
    >>> d.ready(Job("gpu-task", (0, 0, 1), {"GPU": 1.0}))
    >>> d.ready(Job("cpu-task", (0, 0, 2)))
    >>> sorted(d.plan(lambda addr: 0, ["c", "g"]))
    [('cpu-task', 'c'), ('gpu-task', 'g')]
    """

    def __init__(
        self,
        workers: Mapping[str, WorkerInfo],
        *,
        gpu_prefetch: float = 1.0,
        saturation: float = 1.1,
        lookahead: float = 1.0,
        share_gpu_threads: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = workers
        self.gpu_prefetch = gpu_prefetch
        self.threads = ThreadPolicy(saturation, share_gpu_threads)
        self.clock = clock
        self.lookahead = lookahead
        self.q = ReadyQueues()
        self.jobs = self.q.jobs  # ready jobs by key
        self.committed: dict[Hashable, Committed] = {}
        #: GPU tasks being fed (a feeder dispatched) or waiting, not yet finished
        self.pipe = FeedPipe()
        #: Unfinished GPU tasks the plugin knows of (held, waiting, running): set by it
        self.gpu_outstanding = 0
        #: Highest user priority among them, and their smallest share of a GPU: set by it
        self.gpu_top_priority = 0.0
        #: The same among the GPU work a GPU of this much memory can run: set by it
        self.gpu_top_priority_for: Callable[[float], float] | None = None
        self.gpu_min_share = 1.0
        self._parked: set[Hashable] = set()  # GPU jobs no worker can run now
        self._per_worker: dict[str, dict[Hashable, Committed]] = {}
        self._gpu_committed = 0
        self.gpus = GpuIndex(workers)  # GPU workers by shape and load: choices in O(shapes)

    def __repr__(self) -> str:
        return (
            f"Dispatcher(ready={len(self.jobs)}, committed={len(self.committed)}, "
            f"pipe={len(self.pipe)}/{self.pipe_limit})"
        )

    # ---- jobs in and out
    def ready(self, job: Job) -> None:
        """``job`` can run now: queue it (again, if it was queued before)."""
        self.withdraw(job.key)
        kind = "gpu" if is_gpu(job) else "other" if job.consumer is None else "feed"
        self.pipe.learn(kind, job.duration)
        self.q.push(job, self._scarcity(job) if kind == "gpu" else 0)

    def withdraw(self, key: Hashable) -> None:
        """``key`` is no longer ready (released, forgotten, computed elsewhere)."""
        self.q.withdraw(key)
        self._parked.discard(key)

    def done(self, key: Hashable) -> Hashable | None:
        """A dispatched task left its worker; returns that worker's address."""
        c = self.committed.pop(key, None)
        if c is None:
            return None
        if c.gpu or c.gpu_memory:
            self._gpu_committed -= 1
            self.gpus.finish(c)
        self.pipe.left(c.consumer)
        self._per_worker.get(c.worker, {}).pop(key, None)
        return c.worker

    def gpu_task_finished(self, key: Hashable) -> None:
        """A GPU task finished (or will never run): it leaves the pipe."""
        self.pipe.finished(key)

    def membership_changed(self) -> None:
        """Workers joined or left: parked GPU jobs may fit now; forget departed workers."""
        self.gpus.stale()
        for key in list(self._parked):
            job = self.jobs.get(key)
            self._parked.discard(key)
            if job is not None:
                self.ready(job)
        for addr in [a for a in self._per_worker if a not in self.workers]:
            for key in list(self._per_worker[addr]):
                self.done(key)
            del self._per_worker[addr]
            self.gpus.forget(addr)

    # ---- figures
    @property
    def gpu_slots(self) -> float:
        return self.gpus.slots

    @property
    def pipe_limit(self) -> int:
        """GPU tasks fed at once: enough to keep every GPU busy while feeders run."""
        return self.pipe.limit(
            gpu_slots=self.gpu_slots,
            prefetch=self.gpu_prefetch,
            lookahead=self.lookahead,
            others_waiting=self.q.ready_other > 0,
        )

    def committed_gpu(self, addr: str) -> tuple[float, float]:
        """``(GPU units, GPU memory)`` of work dispatched to ``addr`` and not finished."""
        cs = self._per_worker.get(addr, {}).values()
        return sum(c.gpu for c in cs), sum(c.gpu_memory for c in cs)

    def gpu_tasks_on(self, addr: str) -> int:
        return sum(1 for c in self._per_worker.get(addr, {}).values() if c.gpu)

    def ready_gpu(self) -> int:
        """GPU jobs ready and not dispatched."""
        return self.q.ready_gpu

    # ---- the plan
    def plan(
        self, busy: Callable[[str], int | None], candidates: Iterable[str]
    ) -> list[tuple[Hashable, str]]:
        """Which ready jobs go where now; each pick is committed (see :meth:`done`).

        ``busy(addr)`` is the number of threads in use on a worker (``None`` when it takes
        no work: paused, closing); ``candidates`` the workers that may have free threads.
        """
        picks = self._plan_gpu(busy) if self.q.gpu else []
        if not (self.q.feeders or self.q.others):
            return picks
        new: dict[str, int] = {}
        for _, addr in picks:  # committed now, not yet processing on the scheduler
            new[addr] = new.get(addr, 0) + 1

        def busy_now(addr: str) -> int | None:
            n = busy(addr)
            return None if n is None else n + new.get(addr, 0)

        free = self._free_threads(busy_now, candidates)
        # most free threads first (GPU workers are there only when no CPU worker runs)
        order = sorted(free.items(), key=lambda i: (self.workers[i[0]].is_gpu, -i[1]))
        for addr, n in order:
            for _ in range(n):
                job = self._next_cpu(addr)
                if job is None:
                    break
                self._commit(job, addr)
                picks.append((job.key, addr))
        picks += self._feed_starved_gpus(busy_now, picks, free)
        picks += self._overflow_cpu(free)
        return picks

    def _feed_starved_gpus(
        self,
        busy: Callable[[str], int | None],
        picks: list[tuple[Hashable, str]],
        free: dict[str, int],
    ) -> list[tuple[Hashable, str]]:
        """Feeders onto the kept threads of GPU workers whose GPU waits for inputs."""
        if not self.q.feeders or self.q.ready_gpu:
            return []
        out: list[tuple[Hashable, str]] = []
        for addr in free:
            w = self.workers[addr]
            n = busy(addr)
            if n is None or not w.is_gpu:
                continue
            n += sum(a == addr for _, a in picks)
            lend = starved_feeder_threads(
                w, n, self.gpu_tasks_on(addr), self.threads, gpu_ready=False
            )
            for _ in range(lend):
                head = self.q.head(self.q.feeders, lambda j: not j.needs, self._admissible)
                if head is None:
                    return out
                job = self.jobs[head[2]]
                self._commit(job, addr)
                out.append((job.key, addr))
        return out

    def _overflow_cpu(self, free: dict[str, int]) -> list[tuple[Hashable, str]]:
        """Urgent CPU jobs onto full workers whose committed work all ranks below them."""
        picks: list[tuple[Hashable, str]] = []
        if any(not self.workers[a].is_gpu for a in free):  # GPU threads stay GPU's
            free = {a: n for a, n in free.items() if not self.workers[a].is_gpu}
        while True:
            head = better_entry(
                self.q.head(self.q.feeders, None, self._admissible),
                self.q.head(self.q.others, None),
                prefer_first=False,
            )
            job = None if head is None else self.jobs[head[2]]
            if job is None or job.needs or job.priority <= 0:
                return picks
            addr = choose_urgent_worker(
                job,
                free,
                self.workers,
                lambda a: self._per_worker.get(a, {}).values(),
                now=self.clock(),
            )
            if addr is None:
                return picks
            free[addr] -= 1
            self._commit(job, addr)
            picks.append((job.key, addr))

    # ---- GPU side
    def _plan_gpu(self, busy: Callable[[str], int | None]) -> list[tuple[Hashable, str]]:
        picks: list[tuple[Hashable, str]] = []
        skipped: list[tuple[Any, int, Hashable]] = []
        gangs: set[Hashable] = set()  # tried this round; their members wait uncounted
        waiting: list[tuple[Any, int, Hashable]] = []
        kept = Reservations.of(
            self.pipe.fed,
            self.committed,
            self.jobs,
            self.clock(),
            lambda: self.gpus.free_units(busy),
        )
        while self.q.gpu and len(skipped) < _SCAN:
            item = heapq.heappop(self.q.gpu)
            job = self.q.live(item)
            if job is None:
                continue
            if job.gang is not None:
                if job.gang not in gangs:
                    gangs.add(job.gang)
                    for member, addr in self._gang(job, busy):
                        self._commit(member, addr)
                        picks.append((member.key, addr))
                if job.key in self.jobs:  # the gang waits for all its members or GPUs
                    waiting.append(item)
                continue
            if kept is not None and not kept.admits(job):
                skipped.append(item)
                continue
            addr = self._gpu_worker(job, busy)
            if addr is None:
                skipped.append(item)
                continue
            self._commit(job, addr)
            picks.append((job.key, addr))
            if kept is not None:
                kept.took(job)
        for item in skipped + waiting:
            heapq.heappush(self.q.gpu, item)
        return picks

    def _gang(self, job: Job, busy: Callable[[str], int | None]) -> list[tuple[Job, str]]:
        """Where every member of ``job``'s gang goes now, or nothing (all ready, all fit)."""
        members = sorted(
            (j for j in self.jobs.values() if j.gang == job.gang), key=lambda j: j.rank
        )
        if len(members) < job.gang_size:
            return []

        def capable_of(m: Job) -> list[WorkerInfo]:
            return [w for w in self._capable_gpu(m) if busy(w.address) is not None]

        placed = choose_gang(
            members, capable_of, lambda a: self._per_worker.get(a, {}).values(), self.clock()
        )
        return placed or []

    def _capable_gpu(self, job: Job) -> list[WorkerInfo]:
        return self.gpus.capable(job.needs)

    def _scarcity(self, job: Job) -> int:
        return self.gpus.count(job.needs)

    def _gpu_worker(self, job: Job, busy: Callable[[str], int | None]) -> str | None:
        addr = self.gpus.choose(
            job,
            busy,
            lambda addr: self._per_worker.get(addr, {}).values(),
            prefetch=self.gpu_prefetch,
            top_priority=self.gpu_top_priority_for or self.gpu_top_priority,
            now=self.clock(),
        )
        if addr is None and not self.gpus.count(job.needs):
            self._parked.add(job.key)
        return addr

    # ---- CPU side
    def _free_threads(
        self, busy: Callable[[str], int | None], candidates: Iterable[str]
    ) -> dict[str, int]:
        """Free CPU task slots per worker taking work now (see :mod:`._threads`)."""
        running: dict[str, tuple[WorkerInfo, int]] = {}
        for addr in candidates:
            w = self.workers.get(addr)
            n = busy(addr) if w is not None else None
            if w is not None and n is not None:
                running[addr] = (w, n)
        return free_cpu_slots(
            running,
            self.gpu_tasks_on,
            self.threads,
            gpu_outstanding=bool(self.gpu_outstanding or self.q.ready_gpu or self._gpu_committed),
            min_share=self.gpu_min_share,
        )

    @property
    def _starving(self) -> bool:
        return self.pipe.starving(self.gpu_slots, self.gpu_prefetch)

    def _admissible(self, job: Job) -> bool:
        if job.consumer is None:
            return True
        draining = bool(self._gpu_committed or self.q.ready_gpu)
        return self.pipe.admits(job, self.pipe_limit, draining=draining)

    def _next_cpu(self, addr: str) -> Job | None:
        w = self.workers[addr]

        def fits(j: Job) -> bool:
            return not j.needs or w.can_run(j.needs)

        local = self.q.head(self.q.local.get(addr), fits)
        feeder = self.q.head(self.q.feeders, fits, self._admissible)
        other = self.q.head(self.q.others, fits)
        best = better_entry(feeder, other, prefer_first=self._starving)
        if local is not None and (best is None or local[0][:2] <= best[0][:2]):
            best = local
        if best is None:
            return None
        return self.jobs[best[2]]

    def _commit(self, job: Job, addr: str) -> None:
        self.withdraw(job.key)
        until = self.clock() + max(job.duration, 0.0)
        c = Committed(
            addr, job.gpu, job.gpu_memory, job.priority, job.consumer, until, known=job.known
        )
        self.committed[job.key] = c
        if c.gpu or c.gpu_memory:
            self._gpu_committed += 1
            self.gpus.commit(c)
        self._per_worker.setdefault(addr, {})[job.key] = c
        self.pipe.committed(job, gpu=is_gpu(job))
