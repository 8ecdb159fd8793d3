"""Tasks whose resources no worker can give: one notice per requirement, a timeout for GPUs.

Only resources swarmstore manages (``GPU``, ``GPU_MEMORY``) can fail a task: after
``swarmstore.compute.unsatisfiable-timeout`` without a capable worker (``null``: never) it
fails with :class:`~swarmstore.errors.UnsatisfiableRequirements`, saying what is missing. A
task asking for any other resource nobody declares waits for a worker, as in stock Dask.
Log lines and ``swarmstore`` events come once per distinct requirement, not once per task.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from swarmstore.compute import _apply
from swarmstore.compute.requirements import GPU, managed_needs

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Mapping

    from distributed.scheduler import Scheduler, TaskState

    from swarmstore.compute._figures import PlacementCounts
    from swarmstore.compute.placement import Placer

__all__ = ["UnsatisfiableWatch"]

logger = logging.getLogger("swarmstore.compute.plugin")


class UnsatisfiableWatch:
    """Report and time out unsatisfiable requirements on one scheduler."""

    def __init__(self, placer: Placer, counts: PlacementCounts, timeout: float | None) -> None:
        self.placer = placer
        self.counts = counts
        self.timeout = timeout
        self._since: dict[Hashable, float] = {}
        self._reported: set[frozenset[tuple[str, float]]] = set()

    def forget(self, key: Hashable) -> None:
        self._since.pop(key, None)

    def membership_changed(self) -> None:
        """A requirement may be met now: say it again if it is not."""
        self._reported.clear()

    def waiting(self, scheduler: Scheduler, key: Hashable, needs: dict[str, float]) -> None:
        """A new task needs ``needs`` and no worker can run it: log once per requirement."""
        self.counts.unsatisfiable_waiting += 1
        shape = frozenset(needs.items())
        if shape in self._reported:
            return
        self._reported.add(shape)
        timeout = self.timeout if managed_needs(needs) else None
        logger.warning(
            "swarmstore: no worker can run tasks needing %s (first: %r): %s; they wait for "
            "one to join%s",
            needs,
            key,
            self.placer.shortfall(needs),
            f" and fail after {timeout:g}s" if timeout is not None else "",
        )
        event = {"action": "unsatisfiable-waiting", "key": key, "resources": needs}
        scheduler.log_event("swarmstore", {**event, "timeout": timeout})

    def check(
        self,
        scheduler: Scheduler,
        needs_of: Callable[[TaskState], Mapping | None],
        gang_of: Callable[[Hashable], tuple[Hashable, int] | None] = lambda key: None,
    ) -> None:
        """Fail the tasks that waited past the timeout for GPUs no worker can give, and
        gangs larger than all the GPUs able to run their tasks together."""
        if self.timeout is None or not scheduler.unrunnable:
            return
        now = monotonic()
        due: dict[tuple[frozenset[tuple[str, float]], str], list[TaskState]] = {}
        for ts in list(scheduler.unrunnable):
            needs = managed_needs(needs_of(ts))
            why = self._why(needs, gang_of(ts.key)) if needs else None
            if why is None:
                self._since.pop(ts.key, None)
                continue  # someone could run it: busy, held or restricted, not ours to fail
            # counted from when we first saw no capable worker, not from entering no-worker:
            # a held GPU task may have waited long for a slot before its workers went away
            since = self._since.setdefault(ts.key, now)
            if now - since > self.timeout:
                due.setdefault((frozenset(needs.items()), why), []).append(ts)
        for (shape, why), tasks in due.items():
            self._fail(scheduler, dict(shape), tasks, why)

    def _why(self, needs: Mapping[str, float], gang: tuple[Hashable, int] | None) -> str | None:
        """Why ``needs`` (in a gang of ``gang[1]`` tasks) can never be met now, or None."""
        capable = self.placer.capable(needs)
        if not capable:
            return self.placer.shortfall(needs)
        if gang is None or gang[1] <= 1:
            return None
        want = gang[1] * float(needs.get(GPU, 1.0))
        have = sum(self.placer.workers[addr].gpus for addr, _ in capable)
        if want <= have + 1e-9:
            return None
        return (
            f"its gang of {gang[1]} tasks needs {want:g} GPUs at once; the workers able to "
            f"run them have {have:g} in all"
        )

    def _fail(
        self, scheduler: Scheduler, needs: dict[str, float], tasks: list[Any], why: str
    ) -> None:
        assert self.timeout is not None
        msg = (
            f"needs resources {needs} but no worker of {len(scheduler.workers)} can give them: "
            f"{why} (waited {self.timeout:g}s; "
            "swarmstore.compute.unsatisfiable-timeout). Start workers with those resources, "
            "or install swarmstore's worker plugin (plugins/worker.py) so GPUs are declared."
        )
        for ts in tasks:
            self._since.pop(ts.key, None)
        keys = _apply.fail_unsatisfiable(scheduler, tasks, msg)
        self.counts.failed(len(keys))
        logger.error("%d task(s) failed: each %s", len(keys), msg)
        scheduler.log_event(
            "swarmstore", {"action": "unsatisfiable-failed", "resources": needs, "keys": keys}
        )
