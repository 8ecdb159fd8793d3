"""GPU slots kept for more urgent GPU tasks on their way: reservation with backfill.

An urgent job (``priority=``) that arrives during a flood reaches its GPU stage after its
CPU feeders run. Until then its GPU tasks are not ready, so without a reservation a GPU
that frees meanwhile starts lower-ranked work, and the urgent tasks wait a whole GPU task
for it. As in EASY backfilling, the dispatcher keeps one free GPU per
more urgent GPU task whose feeders are dispatched (the pipe knows them, and when its last
feeder is expected to finish, from task-prefix averages), and lets lower-ranked work take a
kept GPU only when it is expected to finish before that task is ready. Prefetch room is
already closed to lower-ranked work while more urgent GPU work is outstanding
(:func:`~swarmstore.compute._choose.choose_gpu_worker`'s ``top_priority``). Work already
prefetched onto a GPU worker before the urgent job came is not recalled: in scenario a of
``bench_compute.py`` that is what the urgent GPU stage waits for, and its latency measured
the same with and without the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Mapping

    from swarmstore.compute._jobs import Committed, Job

__all__ = ["Reservations"]


@dataclass
class Reservations:
    """Free GPUs this round, and the more urgent GPU tasks on their way.

    >>> from swarmstore.compute._jobs import Job
    >>> r = Reservations(free=1.0, coming=[(10.0, 5.0)], now=0.0)  # priority 10, ready at 5 s
    >>> r.admits(Job("long", (0,), {"GPU": 1.0}, duration=9.0))  # would hold it past 5 s
    False
    >>> r.admits(Job("short", (0,), {"GPU": 1.0}, duration=2.0))  # backfill: done by then
    True
    >>> r.admits(Job("urgent", (-10,), {"GPU": 1.0}, duration=9.0))  # not below it
    True
    """

    #: GPU units free on live GPU workers
    free: float
    #: (user priority, when it is expected to be ready) per GPU task on its way
    coming: list[tuple[float, float]]
    now: float

    @classmethod
    def of(
        cls,
        fed: Mapping[Hashable, float],
        committed: Mapping[Hashable, Committed],
        ready: Mapping[Hashable, Job],
        now: float,
        free: Callable[[], float],
    ) -> Reservations | None:
        """The GPU tasks on their way (``fed``: in the pipe; not ``ready``, not
        ``committed``), each expected ready when its last committed feeder is expected to
        end (now, for feeders whose prefix never ran: Dask's default guess of 0.5 s would
        let long work backfill ahead of a feeder that takes milliseconds); None when there
        are none. ``free()``, the GPU units free now, is asked only when some are."""
        coming = {k: p for k, p in fed.items() if k not in committed and k not in ready}
        if not coming:
            return None
        when = dict.fromkeys(coming, now)
        for c in committed.values():  # a feeder of unmeasured length may end any moment
            if c.consumer in when and c.known:
                when[c.consumer] = max(when[c.consumer], c.until)
        return cls(free(), [(coming[k], when[k]) for k in coming], now)

    def admits(self, job: Job) -> bool:
        """May ``job`` take a free GPU now without delaying more urgent work on its way?"""
        end = self.now + max(job.duration, 0.0)
        kept = sum(1 for p, ready in self.coming if p > job.priority and ready < end)
        return kept == 0 or self.free - kept >= max(job.gpu, 1e-9) - 1e-9

    def took(self, job: Job) -> None:
        """``job`` was dispatched this round."""
        self.free = max(0.0, self.free - job.gpu)
