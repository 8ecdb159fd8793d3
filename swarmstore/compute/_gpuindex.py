"""The GPU workers, indexed by shape and by the GPU work committed to each.

The dispatcher used to scan every worker for each GPU job, twice (which workers can run it,
then which of them is least loaded): 2 ms a job at 1,000 workers, in the scheduler's event
loop. Workers of one *shape* (the same declared resources) are interchangeable for fit, and
a cluster has a handful of shapes however many workers it has. So the index keeps, per
shape, its workers sorted by committed GPU units; a choice visits the shapes that can run
the job and the head of each list. The dispatcher reports every commit and finish
(:meth:`GpuIndex.commit`, :meth:`GpuIndex.finish`); membership changes rebuild the shapes.

The choice is :func:`~swarmstore.compute._choose.choose_gpu_worker`'s, the same worker for
the same state (tests compare the two): a free slot first, then the smallest GPU that fits,
the least loaded, the first-added on ties; prefetch room under the same rules; an urgent job
overflowing onto a full worker only when some committed GPU work ranks below it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sortedcontainers import SortedList

from swarmstore.compute._choose import mem_ok, overflow_worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from swarmstore.compute._jobs import Committed, Job
    from swarmstore.compute.placement import WorkerInfo

__all__ = ["GpuIndex"]

type Entry = tuple[float, int, str]  # (GPU units committed, order added, address)


@dataclass
class _Shape:
    """GPU workers with the same declared resources, by committed GPU units."""

    info: WorkerInfo  # the first of them, for what they all share
    by_load: SortedList = field(default_factory=SortedList)

    @property
    def per_gpu(self) -> float:
        return self.info.memory_per_gpu


class GpuIndex:
    """GPU workers of ``workers`` (the dispatcher's live mapping) by shape and load."""

    def __init__(self, workers: Mapping[str, WorkerInfo]) -> None:
        self.workers = workers
        #: committed (GPU units, GPU memory) per worker, kept across rebuilds
        self.load: dict[str, tuple[float, float]] = {}
        self._priorities: Counter[float] = Counter()  # of committed GPU work
        self._stamp: int | None = None
        self._shapes: list[_Shape] = []
        self._entry: dict[str, tuple[_Shape, Entry]] = {}
        self._capable: dict[frozenset[tuple[str, float]], list[_Shape]] = {}
        self._slots = 0.0

    # ---- membership
    def stale(self) -> None:
        """Workers joined, left or changed: rebuild before the next question."""
        self._stamp = None

    def _fresh(self) -> None:
        if self._stamp == len(self.workers):
            return
        shapes: dict[frozenset[tuple[str, float]], _Shape] = {}
        self._entry.clear()
        self._capable.clear()
        for order, (addr, w) in enumerate(self.workers.items()):
            if not w.is_gpu:
                continue
            s = shapes.setdefault(frozenset(w.resources.items()), _Shape(w))
            entry = (self.load.get(addr, (0.0, 0.0))[0], order, addr)
            s.by_load.add(entry)
            self._entry[addr] = (s, entry)
        self._shapes = sorted(shapes.values(), key=lambda s: s.per_gpu)  # stable: order added
        self._slots = sum(w.gpus for w in self.workers.values())
        self._stamp = len(self.workers)

    # ---- load
    def commit(self, c: Committed) -> None:
        """GPU work ``c`` was dispatched to its worker."""
        self._move(c.worker, c.gpu, c.gpu_memory)
        self._priorities[c.priority] += 1

    def finish(self, c: Committed) -> None:
        """GPU work ``c`` left its worker."""
        self._move(c.worker, -c.gpu, -c.gpu_memory)
        self._priorities[c.priority] -= 1
        if self._priorities[c.priority] <= 0:
            del self._priorities[c.priority]

    def forget(self, addr: str) -> None:
        """``addr`` left and its work with it."""
        self.load.pop(addr, None)

    def _move(self, addr: str, units: float, memory: float) -> None:
        used, mem = self.load.get(addr, (0.0, 0.0))
        self.load[addr] = (used + units, mem + memory)
        held = self._entry.get(addr)
        if held is not None and self._stamp is not None:
            s, (_, order, _) = held
            s.by_load.remove(held[1])
            entry = (used + units, order, addr)
            s.by_load.add(entry)
            self._entry[addr] = (s, entry)

    # ---- questions
    @property
    def slots(self) -> float:
        """GPUs declared, all workers together."""
        self._fresh()
        return self._slots

    def free_units(self, busy: Callable[[str], int | None]) -> float:
        """GPU units not committed on the workers taking work now (a scan: for rounds
        that hold GPUs back, see :mod:`._reserve`)."""
        self._fresh()
        total = 0.0
        for s in self._shapes:
            for used, _, addr in s.by_load:
                if used >= s.info.gpus:
                    break
                if busy(addr) is not None:
                    total += s.info.gpus - used
        return total

    def _shapes_for(self, needs: Mapping[str, float]) -> list[_Shape]:
        self._fresh()
        key = frozenset(needs.items())
        found = self._capable.get(key)
        if found is None:
            found = self._capable[key] = [s for s in self._shapes if s.info.can_run(needs)]
        return found

    def count(self, needs: Mapping[str, float]) -> int:
        """GPU workers able to run ``needs`` (declared totals)."""
        return sum(len(s.by_load) for s in self._shapes_for(needs))

    def capable(self, needs: Mapping[str, float]) -> list[WorkerInfo]:
        """Those workers, in the order they were added."""
        entries = sorted(e for s in self._shapes_for(needs) for e in s.by_load)
        return [self.workers[addr] for _, _, addr in entries]

    def choose(
        self,
        job: Job,
        busy: Callable[[str], int | None],
        committed: Callable[[str], Iterable[Committed]],
        *,
        prefetch: float,
        top_priority: float | Callable[[float], float],
        now: float,
    ) -> str | None:
        """The worker ``job`` goes to now (see the module docstring), or None."""
        shapes = [s for s in self._shapes_for(job.needs) if _live(s, busy)]
        if not shapes:
            return None
        found = self._best(job, shapes, busy, lambda s: 1.0)
        if found is not None:
            return found
        smallest = shapes[0].per_gpu

        def room(s: _Shape) -> float:
            top = top_priority(s.per_gpu) if callable(top_priority) else top_priority
            bigger = s.per_gpu > smallest * 1.001
            return 1.0 if bigger or job.gpu > 1 or job.priority < top else 1.0 + prefetch

        found = self._best(job, shapes, busy, room)
        if found is not None or not self._priorities or job.priority <= min(self._priorities):
            return found
        live_workers = [
            self.workers[a] for s in shapes for _, _, a in s.by_load if busy(a) is not None
        ]
        return overflow_worker(job, live_workers, committed, prefetch, now)

    def _best(
        self,
        job: Job,
        shapes: list[_Shape],
        busy: Callable[[str], int | None],
        room: Callable[[_Shape], float],
    ) -> str | None:
        """The least loaded live worker with ``room(shape)`` GPUs' worth of space for the
        job, smallest GPU first (score: memory per GPU, load per GPU, order added)."""
        best: tuple[float, float, int] | None = None
        choice = None
        for s in shapes:
            if best is not None and s.per_gpu > best[0]:
                break
            r, w = room(s), s.info
            for used, order, addr in s.by_load:
                if used + job.gpu > w.gpus * r + 1e-9:
                    break
                if busy(addr) is None or not mem_ok(w, self.load.get(addr, (0, 0))[1], job, r):
                    continue
                score = (s.per_gpu, used / w.gpus, order)
                if best is None or score < best:
                    best, choice = score, addr
                break
        return choice


def _live(s: _Shape, busy: Callable[[str], int | None]) -> bool:
    """Whether any worker of ``s`` takes work now (paused and closing ones do not)."""
    return any(busy(addr) is not None for _, _, addr in s.by_load)
