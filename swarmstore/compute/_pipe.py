"""The feeding pipe: how many GPU tasks CPU producers may feed at once (dask/distributed#9164).

A plain object for :class:`~swarmstore.compute.dispatch.Dispatcher`. A CPU job that feeds a
GPU task is admitted only while fewer than :meth:`FeedPipe.limit` GPU tasks of at least its
user priority are being fed or wait, unless its own GPU task is among them, so producers do
not flood memory ahead of the GPUs (stock Dask runs every restricted producer at once).

The limit covers the time feeding takes, as a multiple of a GPU task's time (task-prefix
averages): the feeders' own duration, and while other CPU work waits, that work's duration
too: a thread that takes other work while the pipe is full is lost to the feeders until
that work finishes, so the pipe must hold enough GPU work to last until then.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.compute._jobs import Job

__all__ = ["FeedPipe"]


class FeedPipe:
    """GPU tasks being fed or waiting, and the expected durations that size the pipe.

    >>> pipe = FeedPipe()
    >>> pipe.limit(gpu_slots=1, prefetch=1.0, lookahead=1.0, others_waiting=False)
    4
    >>> pipe.learn("other", 5.0)  # long CPU work competes for the feeders' threads
    >>> pipe.limit(gpu_slots=1, prefetch=1.0, lookahead=1.0, others_waiting=True)
    6
    """

    def __init__(self) -> None:
        #: GPU task -> the user priority it is fed at (a feeder dispatched, or it waits)
        self.fed: dict[Hashable, float] = {}
        #: feeders dispatched and not finished
        self.feeding = 0
        self.durations = {"feed": 0.5, "gpu": 0.5, "other": 0.5}

    def __len__(self) -> int:
        return len(self.fed)

    def __contains__(self, key: object) -> bool:
        return key in self.fed

    def learn(self, kind: str, duration: float) -> None:
        """A ready job of ``kind`` (``feed``, ``gpu``, ``other``) is expected to take this long."""
        if duration > 0:
            self.durations[kind] = 0.9 * self.durations[kind] + 0.1 * duration

    def limit(
        self, *, gpu_slots: float, prefetch: float, lookahead: float, others_waiting: bool
    ) -> int:
        """GPU tasks fed at once: enough to keep every GPU busy while feeders run."""
        d = self.durations
        feed = d["feed"] + (d["other"] if others_waiting else 0.0)
        ratio = min(feed / max(d["gpu"], 1e-3), 8.0)
        return max(1, math.ceil(gpu_slots * (1 + prefetch + lookahead + ratio)))

    def starving(self, gpu_slots: float, prefetch: float) -> bool:
        """Fewer GPU tasks being fed than the GPUs need to stay busy."""
        return len(self.fed) < gpu_slots * (1 + prefetch)

    def admits(self, job: Job, limit: int, *, draining: bool) -> bool:
        """May ``job`` run now? ``draining``: GPU work in flight can empty the pipe."""
        c = job.consumer
        if c is None or c in self.fed or len(self.fed) < limit:
            return True
        # urgent work sees only the pipe's work at least as urgent (it runs before the rest)
        if sum(p >= job.priority for p in self.fed.values()) < limit:
            return True
        # safety valve: nothing in flight can drain the pipe (a consumer may wait for a task
        # fed by a consumer outside it), so let one more through
        return not (draining or self.feeding)

    def committed(self, job: Job, *, gpu: bool) -> None:
        """``job`` was dispatched: its GPU task (or itself, a GPU job) is in the pipe."""
        if job.consumer is not None:
            self.feeding += 1
            self.fed[job.consumer] = max(job.priority, self.fed.get(job.consumer, job.priority))
        elif gpu:
            self.fed[job.key] = job.priority  # ready without feeders of ours: in the pipe

    def left(self, consumer: Hashable | None) -> None:
        """A dispatched job left its worker (``consumer``: the GPU task it fed, if any)."""
        self.feeding -= consumer is not None

    def finished(self, key: Hashable) -> None:
        """A GPU task finished (or will never run): it leaves the pipe."""
        self.fed.pop(key, None)
