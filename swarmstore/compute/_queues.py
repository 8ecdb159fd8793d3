"""The dispatcher's ready jobs, in rank order: GPU jobs, feeders of GPU jobs, other CPU jobs.

Plain bookkeeping for :class:`~swarmstore.compute.dispatch.Dispatcher`, which decides who
runs what; here only what is ready and which ready job comes first. Heaps with lazy
deletion: a job queued again gets a new sequence number, and entries whose number is not
the job's current one are skipped (and dropped) when they reach the top.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from swarmstore.compute._jobs import Job, is_gpu

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["Entry", "ReadyQueues"]

#: A heap entry: (rank, sequence number, key)
Entry = tuple[Any, int, "Hashable"]

_SCAN = 64  # entries looked at past the head of a heap before giving up


class ReadyQueues:
    """Ready jobs by key, and heaps of them by rank.

    >>> q = ReadyQueues()
    >>> q.push(Job("a", (0, 0, 2)))
    >>> q.push(Job("b", (0, 0, 1)))
    >>> q.head(q.others, None)[2]
    'b'
    >>> q.withdraw("b").key, q.head(q.others, None)[2]
    ('b', 'a')
    """

    def __init__(self) -> None:
        self.jobs: dict[Hashable, Job] = {}
        #: GPU jobs, ranked by user priority, then scarcity (fewest capable workers first)
        self.gpu: list[Entry] = []
        #: CPU jobs that feed a GPU task, and the rest
        self.feeders: list[Entry] = []
        self.others: list[Entry] = []
        #: CPU jobs by the worker holding most of their inputs
        self.local: dict[str, list[Entry]] = {}
        self.ready_gpu = 0
        self.ready_other = 0
        self._seq = 0
        self._entry: dict[Hashable, int] = {}

    def push(self, job: Job, scarcity: int = 0) -> None:
        """Queue ``job`` (the caller withdrew any earlier entry of its key)."""
        self._seq += 1
        seq = self._seq
        self.jobs[job.key] = job
        self._entry[job.key] = seq
        if is_gpu(job):
            self.ready_gpu += 1
            heapq.heappush(self.gpu, ((job.rank[:1], scarcity, *job.rank[1:]), seq, job.key))
            return
        item = (job.rank, seq, job.key)
        if job.consumer is not None:
            heapq.heappush(self.feeders, item)
        else:
            self.ready_other += 1
            heapq.heappush(self.others, item)
        if job.home is not None:
            local = self.local.setdefault(job.home, [])
            heapq.heappush(local, item)
            if len(local) > 2 * len(self.jobs) + 64:  # drop stale entries now and then
                self.local[job.home] = [i for i in local if self.live(i) is not None]
                heapq.heapify(self.local[job.home])

    def withdraw(self, key: Hashable) -> Job | None:
        """``key`` is no longer ready; returns its job, if it was queued."""
        job = self.jobs.pop(key, None)
        if job is not None and is_gpu(job):
            self.ready_gpu -= 1
        elif job is not None and job.consumer is None:
            self.ready_other -= 1
        self._entry.pop(key, None)
        return job

    def live(self, item: Entry) -> Job | None:
        """The job of a heap entry, or None when the entry is stale."""
        key = item[2]
        if self._entry.get(key) != item[1]:
            return None
        return self.jobs.get(key)

    def head(
        self,
        heap: list[Entry] | None,
        fits: Callable[[Job], bool] | None,
        admissible: Callable[[Job], bool] | None = None,
    ) -> Entry | None:
        """The best live entry of ``heap`` that ``fits`` and is ``admissible`` (left in place)."""
        if not heap:
            return None
        skipped = []
        found = None
        while heap and len(skipped) < _SCAN:
            job = self.live(heap[0])
            if job is None:
                heapq.heappop(heap)
                continue
            if (fits is None or fits(job)) and (admissible is None or admissible(job)):
                found = heap[0]
                break
            skipped.append(heapq.heappop(heap))
        for item in skipped:
            heapq.heappush(heap, item)
        return found
