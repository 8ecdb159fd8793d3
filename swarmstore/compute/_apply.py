"""The one place that changes scheduler state for placement.

:class:`~swarmstore.compute.placement.Placer` and :class:`~swarmstore.compute.dispatch.Dispatcher`
decide; SwarmPlugin calls these functions to apply their answers to ``TaskState`` objects
and to run the resulting transitions. Nothing else in swarmstore edits restrictions,
priorities or run specs.
"""

from __future__ import annotations

import logging
from time import time
from typing import TYPE_CHECKING, Any

from dask._task_spec import Task
from distributed.core import Status
from distributed.protocol import pickle

from swarmstore.compute.dispatch import Job
from swarmstore.compute.placement import HOLD, WorkerInfo
from swarmstore.errors import PlacementError, UnsatisfiableRequirements

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    from distributed.scheduler import Scheduler, TaskState, WorkerState

    from swarmstore.compute.placement import Decision

__all__ = [
    "apply_decision",
    "busy_threads",
    "dispatch",
    "fail_invalid",
    "fail_unsatisfiable",
    "hold",
    "job_of",
    "pinned_by_user",
    "release",
    "repin",
    "restricted_by_user",
    "worker_info",
    "worker_saturation",
]

logger = logging.getLogger("swarmstore.compute.plugin")

_HOME_BYTES = 2**20  # inputs worth moving a job to where they are


def _raise(exc_type: type[Exception], message: str) -> None:
    """The body of a task that must fail with ``message`` (its annotation was invalid)."""
    raise exc_type(message)


def hold(ts: TaskState) -> None:
    """Park ``ts`` in ``no-worker`` once ready, until :func:`dispatch` names its worker."""
    ts.worker_restrictions = {HOLD}
    ts.loose_restrictions = False


def pinned_by_user(ts: TaskState) -> bool:
    """The user restricted ``ts`` to workers or hosts (``workers=``)."""
    return bool(ts.worker_restrictions or ts.host_restrictions)


def restricted_by_user(ts: TaskState) -> bool:
    """The user restricted ``ts`` in any way (``workers=``, ``resources=``)."""
    return bool(ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions)


def apply_decision(ts: TaskState, d: Decision) -> None:
    """Set what ``d`` says on a new task (state ``released``)."""
    if d.resources:
        ts.resource_restrictions = {**(ts.resource_restrictions or {}), **d.resources}
    if d.priority is not None and ts.priority:
        ts.priority = (-d.priority, *ts.priority[1:])
    if d.hold:
        hold(ts)
    elif d.workers is not None:
        ts.worker_restrictions = set(d.workers)
        ts.loose_restrictions = False


def fail_invalid(ts: TaskState, message: str) -> None:
    """Make a task with a malformed annotation fail with ``message`` when it runs."""
    ts.run_spec = Task(ts.key, _raise, PlacementError, message)
    ts.resource_restrictions = None
    ts.worker_restrictions = None
    ts.host_restrictions = None
    logger.warning("invalid swarm annotation: %s", message)


def worker_info(ws: WorkerState) -> WorkerInfo:
    """A worker as placement sees it; its stable identity for chunk affinity is its name,
    unless that is its address (the ring then knows it by address)."""
    name = str(ws.name)
    identity = "" if name == ws.address else f"name:{name}"
    return WorkerInfo(ws.address, ws.nthreads, dict(ws.resources), identity)


def worker_saturation() -> float:
    """Dask's ``worker-saturation``: CPU jobs per thread the dispatcher keeps in flight."""
    import dask.config

    value = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.1


def busy_threads(scheduler: Scheduler, addr: str) -> int | None:
    """Threads in use on ``addr`` as the scheduler sees them; ``None`` if it takes no work."""
    ws = scheduler.workers.get(addr)
    if ws is None or ws.status != Status.running:
        return None
    return len(ws.processing) - len(ws.long_running)


def job_of(
    scheduler: Scheduler,
    ts: TaskState,
    needs: Mapping[str, float],
    consumer: Hashable | None,
    gang: tuple[Hashable, int] | None = None,
) -> Job:
    """The dispatcher's view of a ready held task: rank, needs, inputs' home, duration,
    and ``(gang id, members)`` when it belongs to a gang."""
    home = None
    if ts.dependencies:
        where: dict[str, int] = {}
        for dts in ts.dependencies:
            for ws in dts.who_has or ():
                where[ws.address] = where.get(ws.address, 0) + dts.nbytes
        if where:
            addr, nbytes = max(where.items(), key=lambda i: i[1])
            if nbytes >= _HOME_BYTES:
                home = addr
    avg = ts.prefix.duration_average
    duration = avg if avg >= 0 else scheduler.UNKNOWN_TASK_DURATION
    gid, size = gang if gang is not None else (None, 1)
    rank = tuple(ts.priority or ())
    return Job(ts.key, rank, needs, consumer, home, duration, gid, size, known=avg >= 0)


def dispatch(
    scheduler: Scheduler, picks: Iterable[tuple[Hashable, str]]
) -> tuple[list[tuple[Hashable, str]], list[Hashable]]:
    """Send each picked ready task to its worker; returns (sent, not sent).

    A task no longer waiting in ``no-worker`` is not sent; one the scheduler could not
    place (its worker paused or left meanwhile) is held again.
    """
    recs: dict[Hashable, str] = {}
    sent, unsent = [], []
    tasks = scheduler.tasks
    for key, addr in picks:
        ts = tasks.get(key)
        if ts is None or ts.state != "no-worker":
            unsent.append(key)
            continue
        ts.worker_restrictions = {addr}
        recs[key] = "processing"
        sent.append((key, addr))
    if recs:
        scheduler.transitions(recs, stimulus_id=f"swarmstore-dispatch-{time()}")
    for key, _ in list(sent):
        ts = tasks.get(key)
        if ts is not None and ts.state == "no-worker":
            hold(ts)
            sent.remove((key, _))
            unsent.append(key)
    return sent, unsent


def release(scheduler: Scheduler, keys: Iterable[Hashable]) -> None:
    """Give held tasks back to stock placement (the plugin closes)."""
    recs: dict[Hashable, str] = {}
    for key in keys:
        ts = scheduler.tasks.get(key)
        if ts is None or ts.worker_restrictions is None:
            continue
        if ts.state in ("released", "waiting", "no-worker"):
            ts.worker_restrictions = None
            if ts.state == "no-worker":
                recs[key] = "waiting"
    if recs:
        scheduler.transitions(recs, stimulus_id=f"swarmstore-release-{time()}")


def repin(scheduler: Scheduler, pins: Mapping[Hashable, str | None]) -> None:
    """Restrict chunk tasks to their new owners (``None``: no restriction)."""
    recs: dict[Hashable, str] = {}
    for key, addr in pins.items():
        ts = scheduler.tasks.get(key)
        if ts is None or ts.state in ("memory", "processing", "erred"):
            continue
        ts.worker_restrictions = {addr} if addr else None
        if ts.state == "no-worker" and addr:
            recs[key] = "processing"
    if recs:
        scheduler.transitions(recs, stimulus_id=f"swarmstore-repin-{time()}")


def fail_unsatisfiable(scheduler: Scheduler, tasks: list[TaskState], message: str) -> list[Any]:
    """Fail ``tasks`` with :class:`UnsatisfiableRequirements`; returns their keys."""
    stimulus_id = f"swarmstore-unsatisfiable-{time()}"
    recs: dict[Hashable, str] = {}
    for ts in tasks:
        exc = pickle.dumps(UnsatisfiableRequirements(f"task {ts.key!r} {message}"))
        recs.update(
            scheduler.transition(
                ts.key, "erred", exception=exc, cause=ts.key, stimulus_id=stimulus_id
            )
        )
    scheduler.transitions(recs, stimulus_id)
    return [ts.key for ts in tasks]
