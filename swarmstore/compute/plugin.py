"""SwarmPlugin: the scheduler plugin that applies swarmstore's placement, and hosts extensions.

The hooks stay thin. ``update_graph`` (the only hook before new tasks first transition)
asks :class:`~swarmstore.compute.placement.Placer` for a decision per new task; held tasks
that become ready go to :class:`~swarmstore.compute.dispatch.Dispatcher`, which picks their
workers as capacity frees; :mod:`swarmstore.compute._apply` is the one module that changes
scheduler state.

Extensions (replication, durable results, adaptive scaling) run inside the same plugin, so
they see the parsed requirements and one registration installs everything (protocol:
:mod:`swarmstore.compute._extensions`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from swarmstore import config, metrics
from swarmstore.compute import _apply
from swarmstore.compute._extensions import Extensions
from swarmstore.compute._figures import PLACEMENT_FAMILIES, PlacementCounts, placement_figures
from swarmstore.compute._fusion import AnnotationGuard
from swarmstore.compute._held import HeldTasks
from swarmstore.compute._unsatisfiable import UnsatisfiableWatch
from swarmstore.compute.dispatch import Dispatcher
from swarmstore.compute.placement import Placer
from swarmstore.compute.requirements import Requirements, parse_graph

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from distributed.scheduler import Scheduler, TaskState, WorkerState

__all__ = ["DEFAULT_EXTENSIONS", "SwarmPlugin"]

logger = logging.getLogger(__name__)
# Per-task detail; very verbose at DEBUG
task_logger = logging.getLogger(__name__ + ".tasks")

#: Extensions SwarmPlugin loads unless told otherwise (``"module:Class"``)
DEFAULT_EXTENSIONS: tuple[str, ...] = ("swarmstore.compute.replication:ReplicationController",)

_NOT_STARTED = frozenset({"released", "waiting", "queued", "no-worker"})
_FINISHED = frozenset({"memory", "erred", "forgotten"})


class SwarmPlugin(SchedulerPlugin):
    """GPU/CPU-aware placement, priorities, GPU load balance and chunk affinity in Dask.

    Parameters
    ----------
    extensions : sequence of str or type, optional
        Extensions to host (see the module docstring); default :data:`DEFAULT_EXTENSIONS`.
    keep_cpu_off_gpu, share_gpu_threads, affinity : bool, optional
        Default ``swarmstore.compute.keep-cpu-off-gpu`` / ``.share-gpu-threads`` /
        ``.affinity``. ``share_gpu_threads``: GPU workers also run CPU work on the threads
        their GPUs do not need.
    unsatisfiable_timeout : str or float, optional
        How long a task needing GPUs no worker can give waits before it fails with
        :class:`~swarmstore.errors.UnsatisfiableRequirements`; default
        ``swarmstore.compute.unsatisfiable-timeout`` (other resources: never).
    gpu_prefetch : float, optional
        GPU work sent to a GPU worker beyond its GPUs, in multiples of its GPUs (default
        ``swarmstore.compute.gpu-prefetch``, 1: one task waits ready behind each running one).
    keep_annotations : bool, optional
        Materialise dask.array graphs that carry ``swarm`` or ``resources`` annotations
        without linear fusion, on this scheduler and for those graphs only, so the
        annotations reach placement (:mod:`swarmstore.compute._fusion`); default
        ``swarmstore.compute.keep-annotations``.

    Notes
    -----
    All hooks run on the scheduler's event loop. Graphs with no ``swarm`` annotation on a
    cluster without GPU workers skip the per-task work entirely; the ``transition`` hook
    then costs a dict lookup.

    Examples
    --------
    >>> plugin = SwarmPlugin(extensions=())
    >>> plugin.name, plugin.idempotent
    ('swarmstore', True)

    ``await client.register_plugin(SwarmPlugin())`` installs it on a running cluster;
    ``dask scheduler --preload plugins/scheduler.py`` at start.
    """

    name = "swarmstore"
    idempotent = True

    def __init__(
        self,
        extensions: Sequence[str | type] | None = None,
        *,
        keep_cpu_off_gpu: bool | None = None,
        share_gpu_threads: bool | None = None,
        affinity: bool | None = None,
        unsatisfiable_timeout: str | float | None = None,
        gpu_prefetch: float | None = None,
        keep_annotations: bool | None = None,
    ) -> None:
        self.extension_specs = tuple(DEFAULT_EXTENSIONS if extensions is None else extensions)
        self.keep_annotations = config.value("compute.keep-annotations", keep_annotations)
        self.placer = Placer(
            keep_cpu_off_gpu=config.value("compute.keep-cpu-off-gpu", keep_cpu_off_gpu),
            affinity=config.value("compute.affinity", affinity),
        )
        self.dispatcher = Dispatcher(
            self.placer.workers,
            gpu_prefetch=float(config.value("compute.gpu-prefetch", gpu_prefetch)),
            saturation=_apply.worker_saturation(),
            share_gpu_threads=config.value("compute.share-gpu-threads", share_gpu_threads),
        )
        self.placements = PlacementCounts()
        timeout = config.value("compute.unsatisfiable-timeout", unsatisfiable_timeout)
        self.unsatisfiable = UnsatisfiableWatch(self.placer, self.placements, timeout)
        #: Parsed requirements of live annotated tasks (read by extensions)
        self.requirements: dict[Any, Requirements] = {}
        #: Held tasks (ours to dispatch), feeders' GPU tasks, GPU work not finished
        self.held = HeldTasks()
        #: Chunk tasks pinned to one worker: key -> address
        self.pinned: dict[Any, str] = {}
        self.extensions = Extensions()
        self.scheduler: Scheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._round_pending = False
        self._pc: PeriodicCallback | None = None
        self._guard = AnnotationGuard()

    def __repr__(self) -> str:
        return f"SwarmPlugin({self.placer!r}, {self.dispatcher!r}, held={len(self.held)})"

    @property
    def unsatisfiable_timeout(self) -> float | None:
        return self.unsatisfiable.timeout

    # ---------------------------------------------------------------- lifecycle
    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        if self.keep_annotations:
            self._guard.install(scheduler)
        self._sync_workers(scheduler)
        await self.extensions.start(self.extension_specs, scheduler, self)
        timeout = self.unsatisfiable.timeout
        interval = 1.0 if timeout is None else max(0.05, min(1.0, timeout / 4))
        self._pc = PeriodicCallback(self._periodic, interval * 1000)
        scheduler.periodic_callbacks["swarmstore"] = self._pc
        self._pc.start()
        name = f"placement@{id(self)}"
        metrics.register_source(name, self.figures, PLACEMENT_FAMILIES, owner=scheduler)
        metrics.watch_scheduler(scheduler)
        metrics.count_events(scheduler)
        logger.debug("SwarmPlugin started: %r", self)

    async def close(self) -> None:
        metrics.unregister_source(f"placement@{id(self)}")
        self._guard.uninstall()
        if self._pc is not None:
            self._pc.stop()
            if self.scheduler is not None:
                self.scheduler.periodic_callbacks.pop("swarmstore", None)
            self._pc = None
        if self.scheduler is not None and self.held:
            _apply.release(self.scheduler, list(self.held))
        self.held.clear()
        await self.extensions.close()

    def figures(self) -> dict[str, Any]:
        """Placement counts and GPU load (this plugin's :mod:`swarmstore.metrics` source)."""
        if self.scheduler is None:
            return {}
        extra = {"placement_tracked_tasks": len(self.requirements)}
        return placement_figures(self.placements, self.placer, self.dispatcher, extra)

    # ---------------------------------------------------------------- graph
    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        keys: set[Any],
        annotations: dict[str, dict[Any, Any]] | None = None,
        tasks: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        annotations = annotations or {}
        try:
            self._place(scheduler, annotations, tasks if tasks is not None else list(keys))
        except Exception:  # the scheduler would swallow it; say what failed
            logger.exception("swarmstore placement failed; tasks keep stock placement")
        self.extensions.call(
            "update_graph", scheduler, keys=keys, annotations=annotations, tasks=tasks, **kwargs
        )

    def _place(
        self, scheduler: Scheduler, annotations: Mapping[str, Mapping[Any, Any]], tasks: list[Any]
    ) -> None:
        self._sync_workers(scheduler)
        placer = self.placer
        hold_cpu = placer.keep_cpu_off_gpu and placer.has_gpu_workers
        swarm = annotations.get("swarm") or {}
        resources = annotations.get("resources") or {}
        if not swarm and not resources and not hold_cpu:
            return  # the common fast path: nothing of ours in this graph
        reqs, bad = parse_graph(swarm, resources)
        self.requirements.update(reqs)
        self.held.add_gangs(reqs)
        stasks = scheduler.tasks
        for key in tasks if hold_cpu else (*reqs, *bad):
            ts = stasks.get(key)
            if ts is None or ts.run_spec is None or ts.state != "released":
                continue  # not new: placed (or computed) before
            if key in bad:
                _apply.fail_invalid(ts, bad[key])
                continue
            req = reqs.get(key)
            if ts.actor or (req is None and _apply.restricted_by_user(ts)):
                continue  # the user restricted it already: leave it alone
            self._decide(scheduler, ts, req, pinned_by_user=_apply.pinned_by_user(ts))
        gpu = [k for k, r in reqs.items() if r.is_gpu and k in self.held]
        if gpu:
            self._find_feeders(scheduler, gpu)

    def _decide(
        self, scheduler: Scheduler, ts: TaskState, req: Requirements | None, pinned_by_user: bool
    ) -> None:
        d = self.placer.decide(req)
        if pinned_by_user:  # workers= from the user wins over our hold and pins
            d = replace(d, workers=None, hold=False, pinned=False)
        _apply.apply_decision(ts, d)
        self.placements.decided(d)
        if d.hold:
            gpu = None
            if req is not None and req.is_gpu:
                gpu = (-ts.priority[0] if ts.priority else 0.0, min(req.gpu or 1.0, 1.0))
            self.held.add(ts.key, d.resources or {}, gpu)
        elif d.pinned and d.workers:
            self.pinned[ts.key] = next(iter(d.workers))
        if d.unsatisfiable:
            self.unsatisfiable.waiting(scheduler, ts.key, dict(d.resources or {}))
        task_logger.debug("placed %s: %s", ts.key, d)

    def _find_feeders(self, scheduler: Scheduler, gpu_keys: list[Any]) -> None:
        """Map tasks not yet started that feed the new GPU tasks to the first one they feed."""
        for key in self.held.map_feeders(gpu_keys, scheduler.tasks, _NOT_STARTED):
            if key in self.dispatcher.jobs:  # queued before its consumer was known
                self._ready(scheduler.tasks[key])

    # ---------------------------------------------------------------- events
    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        held = self.held.needs  # the dicts themselves: this runs for every transition
        if key in held:
            self._held_transition(key, start, finish)
        elif start == "processing" and self.dispatcher.jobs:
            self._schedule_round()  # a stock task freed a thread
        if finish == "forgotten" and (held or self.requirements or self.pinned):
            self._forget(key)
        if self.extensions.hooks["transition"]:
            self.extensions.call_sync("transition", key, start, finish, *args, **kwargs)

    def _held_transition(self, key: Any, start: str, finish: str) -> None:
        d = self.dispatcher
        if finish != "processing" and key in d.committed:
            d.done(key)  # left its worker (a retry arrives as released -> waiting)
            self._schedule_round()
        elif start == "no-worker" and finish != "processing":
            d.withdraw(key)
        if finish == "no-worker" and self.scheduler is not None:
            self._ready(self.scheduler.tasks[key])
        elif finish in ("released", "waiting") and self.scheduler is not None:
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                _apply.hold(ts)  # lost with a worker, or retried: ours to place again
        if finish in _FINISHED and self.held.finish_gpu(key):
            d.gpu_task_finished(key)
            if not self.held.gpu:
                self._schedule_round()  # GPU workers' reserved threads are free for CPU work

    def _ready(self, ts: TaskState) -> None:
        assert self.scheduler is not None
        held, key = self.held, ts.key
        job = _apply.job_of(
            self.scheduler, ts, held.needs[key], held.consumer(key), held.gang_of.get(key)
        )
        self.dispatcher.ready(job)
        self._schedule_round()

    def _forget(self, key: Any) -> None:
        if self.held.forget(key):
            self.dispatcher.gpu_task_finished(key)
        self.dispatcher.withdraw(key)
        self.dispatcher.done(key)
        self.unsatisfiable.forget(key)
        self.requirements.pop(key, None)
        self.pinned.pop(key, None)

    def add_worker(self, scheduler: Scheduler, worker: str) -> Awaitable[None] | None:
        ws = scheduler.workers.get(worker)
        if ws is not None:
            self.placer.add_worker(_apply.worker_info(ws))
            self._membership_changed()
        return self.extensions.call("add_worker", scheduler, worker)

    def remove_worker(
        self, scheduler: Scheduler, worker: str, **kwargs: Any
    ) -> Awaitable[None] | None:
        self.placer.remove_worker(worker)
        self._membership_changed()
        try:
            moved = [k for k, a in self.pinned.items() if a == worker]
            pins = {k: self._repin(k) for k in moved}
            _apply.repin(scheduler, pins)
        except Exception:
            logger.exception("swarmstore could not re-place tasks of %s", worker)
        return self.extensions.call("remove_worker", scheduler, worker, **kwargs)

    def _repin(self, key: Any) -> str | None:
        """The new owner of a chunk task whose worker left."""
        req = self.requirements.get(key)
        needs = req.resources() if req is not None else {}
        owner = self.placer.owner(req.chunk, needs) if req and req.chunk else None
        if owner is None:
            self.pinned.pop(key, None)
        else:
            self.pinned[key] = owner
        return owner

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        return self.extensions.narrow(scheduler, workers)

    # ---------------------------------------------------------------- dispatch
    def _schedule_round(self) -> None:
        """Run :meth:`dispatch` once, after the current scheduler stimulus is done."""
        if not self._round_pending and self._loop is not None:
            self._round_pending = True
            self._loop.call_soon(self.dispatch)

    def dispatch(self) -> None:
        """Send ready held tasks to the workers the dispatcher picks for them."""
        self._round_pending = False
        scheduler = self.scheduler
        d = self.dispatcher
        if scheduler is None or not d.jobs:
            return
        d.gpu_outstanding = len(self.held.gpu)
        d.gpu_top_priority = self.held.top_priority
        d.gpu_top_priority_for = self.held.top_priority_within
        d.gpu_min_share = self.held.min_share
        picks = d.plan(
            lambda addr: _apply.busy_threads(scheduler, addr),
            [ws.address for ws in scheduler.running],
        )
        if not picks:
            return
        sent, unsent = _apply.dispatch(scheduler, picks)
        for key in unsent:
            d.done(key)
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.state == "no-worker" and key in self.held:
                self._ready(ts)  # bounced (its worker paused): queue it again
        for key, addr in sent:
            if key in self.held.gpu:
                self.placements.dispatched(addr)
        task_logger.debug("dispatched %d task(s)", len(sent))

    def _periodic(self) -> None:
        if self.dispatcher.jobs:
            self.dispatch()  # retries tasks bounced by paused workers
        scheduler = self.scheduler
        if scheduler is not None:
            self._sync_workers(scheduler)  # resources may change (Worker.set_resources)
            self.unsatisfiable.check(scheduler, self._needs_of, self.held.gang_of.get)

    def _needs_of(self, ts: TaskState) -> Mapping[str, float] | None:
        return self.held.needs.get(ts.key) or ts.resource_restrictions

    def check_unsatisfiable(self) -> None:
        """Fail the tasks that waited past the timeout for GPUs no worker can give."""
        if self.scheduler is not None:
            self._sync_workers(self.scheduler)
            self.unsatisfiable.check(self.scheduler, self._needs_of, self.held.gang_of.get)

    # ---------------------------------------------------------------- membership
    def _membership_changed(self) -> None:
        self.dispatcher.membership_changed()
        self.unsatisfiable.membership_changed()
        if self.dispatcher.jobs:
            self._schedule_round()

    def _sync_workers(self, scheduler: Scheduler) -> None:
        """Bring the placer's worker picture up to date (resources change at run time)."""
        if self.placer.sync(scheduler.workers, _apply.worker_info):
            self._membership_changed()
