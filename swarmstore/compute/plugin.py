"""SwarmPlugin: the scheduler plugin that applies swarmstore's placement, and hosts extensions.

The hooks stay thin: they turn scheduler events into calls on
:class:`~swarmstore.compute.placement.Placer` (pure decisions) and apply the answers to
``TaskState`` objects in ``update_graph``, the only hook that runs before new tasks first
transition (``transition`` fires after a state change and cannot redirect a task).

Extension protocol
------------------
Other capabilities (replication of critical results, durable results, adaptive scaling) run
inside the same plugin instead of as separate scheduler plugins, so they see the parsed
requirements and one registration installs everything.

- ``SwarmPlugin(extensions=None)`` loads :data:`DEFAULT_EXTENSIONS`; pass a sequence of
  ``"module:Class"`` names or classes to choose others (``()`` for none). A name whose module
  is not importable is skipped with a logged warning.
- In :meth:`SwarmPlugin.start` each extension is built as ``Ext(scheduler, plugin)``.
- SwarmPlugin forwards these hooks to each extension that defines them, after its own work,
  in load order; an exception in one extension is logged and does not stop the others:

  ``async start()``, ``async close()``,
  ``update_graph(scheduler, *, keys, annotations, **kwargs)`` (also ``client``, ``tasks``,
  ``priority``, ``stimulus_id``), ``transition(key, start, finish, *args, **kwargs)``,
  ``add_worker(scheduler, worker)``, ``remove_worker(scheduler, worker, **kwargs)``,
  ``valid_workers_downscaling(scheduler, workers) -> list`` (each extension may only narrow
  the list it is given; anything it adds is ignored).
- ``plugin.requirements[key]`` holds the parsed
  :class:`~swarmstore.compute.requirements.Requirements` of every live task with a ``swarm``
  (or GPU ``resources``) annotation, filled before extensions see ``update_graph`` and
  dropped when the task is forgotten; read ``critical``, ``replicas``, ``persist`` from it.
- ``plugin.placer`` is the :class:`~swarmstore.compute.placement.Placer` (workers, GPU load).
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import inspect
import logging
from dataclasses import replace
from time import monotonic, time
from typing import TYPE_CHECKING, Any

from dask._task_spec import Task
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import pickle
from tornado.ioloop import PeriodicCallback

from swarmstore import config, metrics
from swarmstore.compute._figures import PLACEMENT_FAMILIES, PlacementCounts
from swarmstore.compute._fusion import AnnotationGuard
from swarmstore.compute.placement import (
    FEEDER_BOOST,
    HOLD,
    Decision,
    Placer,
    WorkerInfo,
    gpu_ancestors,
)
from swarmstore.compute.requirements import (
    GPU,
    GPU_MEMORY,
    Requirements,
    from_annotations,
    managed_needs,
)
from swarmstore.errors import PlacementError, UnsatisfiableRequirements

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping, Sequence

    from distributed.scheduler import Scheduler, TaskState, WorkerState

__all__ = ["DEFAULT_EXTENSIONS", "SwarmPlugin"]

logger = logging.getLogger(__name__)
# Per-task detail; very verbose at DEBUG
task_logger = logging.getLogger(__name__ + ".tasks")

#: Extensions SwarmPlugin loads unless told otherwise (``"module:Class"``)
DEFAULT_EXTENSIONS: tuple[str, ...] = ("swarmstore.compute.replication:ReplicationController",)

_HOOKS = (
    "update_graph",
    "transition",
    "add_worker",
    "remove_worker",
    "valid_workers_downscaling",
)
_DONE = frozenset({"memory", "erred", "released", "forgotten"})
_NOT_STARTED = frozenset({"released", "waiting", "queued", "no-worker"})


def _raise(exc_type: type[Exception], message: str) -> None:
    """The body of a task that must fail with ``message`` (its annotation was invalid)."""
    raise exc_type(message)


def _load(spec: str | type) -> type | None:
    if not isinstance(spec, str):
        return spec
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "Extension")
    except (ImportError, AttributeError) as e:
        logger.warning("swarmstore extension %s not loaded: %s", spec, e)
        return None


def _identity(ws: WorkerState) -> str:
    """A worker's stable name for chunk affinity: its name, unless that is its address."""
    name = str(ws.name)
    return "" if name == ws.address else f"name:{name}"


def _info(ws: WorkerState) -> WorkerInfo:
    return WorkerInfo(ws.address, ws.nthreads, dict(ws.resources), _identity(ws))


class SwarmPlugin(SchedulerPlugin):
    """GPU/CPU-aware placement, GPU load balance and chunk affinity in the Dask scheduler.

    Parameters
    ----------
    extensions : sequence of str or type, optional
        Extensions to host (see the module docstring); default :data:`DEFAULT_EXTENSIONS`.
    keep_cpu_off_gpu, affinity : bool, optional
        Default ``swarmstore.compute.keep-cpu-off-gpu`` / ``.affinity``.
    unsatisfiable_timeout : str or float, optional
        How long a task no worker can ever satisfy waits before it fails with
        :class:`~swarmstore.errors.UnsatisfiableRequirements`; default
        ``swarmstore.compute.unsatisfiable-timeout``.
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
    All hooks run on the scheduler's event loop; nothing here is shared across threads. Work
    per task in ``update_graph`` is constant in the number of workers (placement caches
    per-worker scans, GPU picks use heaps); graphs with no ``swarm`` annotation on a cluster
    without GPU workers skip the per-task loop entirely.

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
        affinity: bool | None = None,
        unsatisfiable_timeout: str | float | None = None,
        gpu_prefetch: float | None = None,
        keep_annotations: bool | None = None,
    ) -> None:
        self.extension_specs = tuple(DEFAULT_EXTENSIONS if extensions is None else extensions)
        self.keep_cpu_off_gpu = config.value("compute.keep-cpu-off-gpu", keep_cpu_off_gpu)
        self.affinity = config.value("compute.affinity", affinity)
        self.keep_annotations = config.value("compute.keep-annotations", keep_annotations)
        self.unsatisfiable_timeout = config.value(
            "compute.unsatisfiable-timeout", unsatisfiable_timeout
        )
        #: Parsed requirements of live annotated tasks (read by extensions)
        self.requirements: dict[Any, Requirements] = {}
        self.extensions: list[Any] = []
        self.gpu_prefetch = float(config.value("compute.gpu-prefetch", gpu_prefetch))
        self.placer = Placer(
            keep_cpu_off_gpu=self.keep_cpu_off_gpu,
            affinity=self.affinity,
            prefetch=self.gpu_prefetch,
        )
        self.scheduler: Scheduler | None = None
        #: Tasks pinned to one worker for chunk affinity: key -> address
        self.pinned: dict[Any, str] = {}
        #: GPU tasks we hold and dispatch as slots free up: key -> resource needs
        self.held: dict[Any, dict[str, float]] = {}
        #: Held tasks dispatched and not yet finished: key -> (worker, needs)
        self.charged: dict[Any, tuple[str, dict[str, float]]] = {}
        self._ready: list[tuple[Any, int, Any]] = []  # heap of (priority, seq, key)
        self._seq = 0
        self._dispatch_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks: dict[str, list[Any]] = {h: [] for h in _HOOKS}
        self._pc: PeriodicCallback | None = None
        self._reported: set[Any] = set()
        self._guard = AnnotationGuard()
        self._unsat_since: dict[Any, float] = {}
        #: Placement decisions counted for ``/metrics`` (see :mod:`swarmstore.metrics`)
        self.placements = PlacementCounts()

    def __repr__(self) -> str:
        return (
            f"SwarmPlugin({self.placer!r}, tracked={len(self.requirements)}, "
            f"extensions={[type(e).__name__ for e in self.extensions]})"
        )

    def figures(self) -> dict[str, Any]:
        """Placement counts, GPU tasks queued, tracked tasks, GPU slots and load per worker
        (this plugin's :mod:`swarmstore.metrics` source)."""
        if self.scheduler is None:
            return {}
        out = self.placements.figures()
        queued = {k for _, _, k in self._ready if k in self.held and k not in self.charged}
        out["placement_gpu_queued"] = len(queued)
        out["placement_tracked_tasks"] = len(self.requirements)
        gpu = self.placer.gpu
        caps = list(gpu.capacity.items())
        out["gpu_slots"] = {addr: gpus for addr, (gpus, _mem) in caps}
        out["gpu_committed"] = {addr: gpu.used.get(addr, (0.0,))[0] for addr, _ in caps}
        return out

    # ---------------------------------------------------------------- lifecycle
    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        if self.keep_annotations:
            self._guard.install(scheduler)
        self._sync_workers(scheduler)
        for spec in self.extension_specs:
            cls = _load(spec)
            if cls is None:
                continue
            ext = cls(scheduler, self)
            self.extensions.append(ext)
            for hook in _HOOKS:
                fn = getattr(ext, hook, None)
                if callable(fn):
                    self._hooks[hook].append(fn)
        for ext in self.extensions:
            if callable(getattr(ext, "start", None)):
                await ext.start()
        timeout = self.unsatisfiable_timeout
        interval = 1.0 if timeout is None else max(0.05, min(1.0, timeout / 4))
        self._pc = PeriodicCallback(self._periodic, interval * 1000)
        scheduler.periodic_callbacks["swarmstore"] = self._pc
        self._pc.start()
        metrics.register_source(
            f"placement@{id(self)}", self.figures, PLACEMENT_FAMILIES, owner=scheduler
        )
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
        for ext in reversed(self.extensions):
            if callable(getattr(ext, "close", None)):
                try:
                    await ext.close()
                except Exception:
                    logger.exception("swarmstore extension %r failed to close", ext)
        self.extensions = []
        self._hooks = {h: [] for h in _HOOKS}

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
        for fn in self._hooks["update_graph"]:
            try:
                fn(scheduler, keys=keys, annotations=annotations, tasks=tasks, **kwargs)
            except Exception:
                logger.exception("swarmstore extension update_graph failed: %r", fn)

    def _place(
        self, scheduler: Scheduler, annotations: Mapping[str, Mapping[Any, Any]], tasks: list[Any]
    ) -> None:
        swarm = annotations.get("swarm") or {}
        resources = annotations.get("resources") or {}
        self._sync_workers(scheduler)
        placer = self.placer
        spread_cpu = placer.keep_cpu_off_gpu and placer.has_gpu_workers and bool(placer.cpu_pool)
        if not swarm and not resources and not spread_cpu:
            return  # the common fast path: nothing of ours in this graph

        reqs, bad = self._parse(swarm, resources)
        self.requirements.update(reqs)
        gpu_keys = [k for k, r in reqs.items() if r.is_gpu]
        feeders = self._feeders(scheduler, gpu_keys) if gpu_keys else set()
        todo: Iterable[Any] = tasks if spread_cpu else (*reqs, *bad, *feeders)
        stasks = scheduler.tasks
        for key in todo:
            ts = stasks.get(key)
            if ts is None or ts.run_spec is None or ts.state != "released":
                continue  # not new: placed (or computed) before
            if key in bad:
                self._fail_invalid(ts, bad[key])
                continue
            req = reqs.get(key)
            feeds = key in feeders
            if req is None and (
                ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions
            ):
                if feeds:
                    self._boost(scheduler, ts)
                continue  # the user restricted it already: leave it alone
            rootish = req is None and not feeds and scheduler.is_rootish(ts)
            decision = placer.decide(
                req, rootish=rootish, feeds_gpu=feeds, base_priority=-ts.priority[0]
            )
            self._apply(scheduler, ts, decision)
        for key in feeders:  # feeders submitted earlier, not started yet: move them up
            ts = stasks.get(key)
            if ts is not None and ts.state != "released":
                self._boost(scheduler, ts)

    def _parse(
        self, swarm: Mapping[Any, Any], resources: Mapping[Any, Any]
    ) -> tuple[dict[Any, Requirements], dict[Any, str]]:
        reqs: dict[Any, Requirements] = {}
        bad: dict[Any, str] = {}
        for key, value in swarm.items():
            try:
                req = from_annotations({"swarm": value, "resources": resources.get(key)})
            except PlacementError as e:
                bad[key] = f"task {key!r}: {e}"
                continue
            if req is not None:
                reqs[key] = req
        for key, value in resources.items():
            is_gpu = isinstance(value, dict) and (GPU in value or GPU_MEMORY in value)
            if key not in swarm and is_gpu:
                req = from_annotations({"resources": value})
                if req is not None:
                    reqs[key] = req
        return reqs, bad

    @staticmethod
    def _feeders(scheduler: Scheduler, gpu_keys: list[Any]) -> set[Any]:
        """Tasks not yet started that GPU tasks transitively depend on.

        Feeders submitted earlier (say ``c.submit`` per stage) are found too; their priority
        is raised in place (:meth:`_boost`).
        """
        stasks = scheduler.tasks

        def deps_of(key: Any) -> list[Any] | None:
            ts = stasks.get(key)
            if ts is None or ts.state not in _NOT_STARTED:
                return None
            return [d.key for d in ts.dependencies]

        return gpu_ancestors(gpu_keys, deps_of)

    def _apply(self, scheduler: Scheduler, ts: TaskState, d: Decision) -> None:
        if d.resources:
            ts.resource_restrictions = {**(ts.resource_restrictions or {}), **d.resources}
        if ts.worker_restrictions or ts.host_restrictions:  # workers= from the user wins
            d = replace(d, workers=None, hold=False)
        self.placements.decided(d, self.placer.cpu_pool)
        if d.workers is not None:
            ts.worker_restrictions = set(d.workers)
            ts.loose_restrictions = d.loose
            if len(d.workers) == 1:
                self.pinned[ts.key] = next(iter(d.workers))
        if d.priority is not None and ts.priority:
            ts.priority = (-d.priority, *ts.priority[1:])
        if d.hold:
            self.held[ts.key] = dict(d.resources or {})
        if d.unsatisfiable:
            self._report_waiting(scheduler, ts.key, dict(d.resources or {}))
        task_logger.debug("placed %s: %s", ts.key, d)

    def _report_waiting(self, scheduler: Scheduler, key: Any, needs: dict[str, float]) -> None:
        """One log line and one event per distinct unsatisfiable requirement."""
        shape = frozenset(needs.items())
        if shape in self._reported:
            return
        self._reported.add(shape)
        managed = bool(managed_needs(needs))
        timeout = self.unsatisfiable_timeout if managed else None
        logger.warning(
            "swarmstore: no worker declares resources %s (first task %r); such tasks wait "
            "for one to join%s",
            needs,
            key,
            f" and fail after {timeout:g}s" if timeout is not None else "",
        )
        scheduler.log_event(
            "swarmstore",
            {"action": "unsatisfiable-waiting", "key": key, "resources": needs, "timeout": timeout},
        )

    @staticmethod
    def _boost(scheduler: Scheduler, ts: TaskState) -> None:
        """Raise the priority of a feeder already known to the scheduler, not yet started."""
        if ts.state not in _NOT_STARTED or not ts.priority:
            return
        first = ts.priority[0]
        if first % 1:
            return  # boosted already: user priorities are integers, boosts add a half
        boosted = first - FEEDER_BOOST
        queued = ts.state == "queued"
        if queued:
            scheduler.queued.discard(ts)
        ts.priority = (boosted, *ts.priority[1:])
        if queued:
            scheduler.queued.add(ts)

    def _fail_invalid(self, ts: TaskState, message: str) -> None:
        """Make a task with a malformed annotation fail with ``message`` when it runs."""
        ts.run_spec = Task(ts.key, _raise, PlacementError, message)
        ts.resource_restrictions = None
        ts.worker_restrictions = None
        ts.host_restrictions = None
        logger.warning("invalid swarm annotation: %s", message)

    # ---------------------------------------------------------------- events
    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if key in self.held:
            if finish == "no-worker":  # ready, parked by HOLD: queue it for a GPU slot
                ts = self.scheduler.tasks[key] if self.scheduler is not None else None
                self._seq += 1
                heapq.heappush(self._ready, (ts.priority if ts else (), self._seq, key))
                self._schedule_dispatch()
            elif start == "processing" or finish in _DONE:  # left its worker: a slot is free
                charged = self.charged.pop(key, None)
                if charged is not None:
                    self.placer.gpu.release(*charged)
                    self._schedule_dispatch()
            if finish == "forgotten":
                del self.held[key]
        if finish == "forgotten":
            self._unsat_since.pop(key, None)
            self.requirements.pop(key, None)
            self.pinned.pop(key, None)
        for fn in self._hooks["transition"]:
            try:
                fn(key, start, finish, *args, **kwargs)
            except Exception:
                logger.exception("swarmstore extension transition failed: %r", fn)

    def add_worker(self, scheduler: Scheduler, worker: str) -> Awaitable[None] | None:
        ws = scheduler.workers.get(worker)
        if ws is not None:
            self.placer.add_worker(_info(ws))
            self._reported.clear()  # a requirement may be met now: say it again if not
            if self._ready:
                self._schedule_dispatch()
        return self._forward("add_worker", scheduler, worker)

    def remove_worker(
        self, scheduler: Scheduler, worker: str, **kwargs: Any
    ) -> Awaitable[None] | None:
        self.placer.remove_worker(worker)
        try:
            self._repin(scheduler, worker)
        except Exception:
            logger.exception("swarmstore could not re-place tasks of %s", worker)
        return self._forward("remove_worker", scheduler, worker, **kwargs)

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        for fn in self._hooks["valid_workers_downscaling"]:
            try:
                allowed = set(fn(scheduler, list(workers)))
            except Exception:
                logger.exception("swarmstore extension valid_workers_downscaling failed: %r", fn)
                continue
            workers = [w for w in workers if w in allowed]
        return workers

    def _forward(self, hook: str, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        pending = []
        for fn in self._hooks[hook]:
            try:
                result = fn(*args, **kwargs)
            except Exception:
                logger.exception("swarmstore extension %s failed: %r", hook, fn)
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        if not pending:
            return None
        return self._gather(pending)

    @staticmethod
    async def _gather(pending: list[Awaitable[Any]]) -> None:
        for r in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(r, Exception):
                logger.error("swarmstore extension hook failed: %r", r)

    # ---------------------------------------------------------------- GPU dispatch
    def _schedule_dispatch(self) -> None:
        """Run :meth:`dispatch` once, after the current scheduler stimulus is done."""
        if not self._dispatch_pending and self._loop is not None:
            self._dispatch_pending = True
            self._loop.call_soon(self.dispatch)

    def dispatch(self) -> None:
        """Send held GPU tasks, highest priority first, to GPU workers with free slots."""
        self._dispatch_pending = False
        scheduler = self.scheduler
        if scheduler is None or not self._ready:
            return
        recs: dict[Any, str] = {}
        skipped = []
        while self._ready and len(skipped) < 32:
            item = heapq.heappop(self._ready)
            key = item[2]
            ts = scheduler.tasks.get(key)
            needs = self.held.get(key)
            if ts is None or needs is None or ts.state != "no-worker" or key in self.charged:
                continue  # stale entry
            addr = self.placer.dispatch(needs)
            if addr is None:
                skipped.append(item)  # no room for these needs now; others may fit
                continue
            ts.worker_restrictions = {addr}
            self.charged[key] = (addr, needs)
            recs[key] = "processing"
            self.placements.dispatched(addr)
        for item in skipped:
            heapq.heappush(self._ready, item)
        if not recs:
            return
        scheduler.transitions(recs, stimulus_id=f"swarmstore-gpu-dispatch-{time()}")
        for key in recs:  # the worker was paused or closing: hold the task again
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.state == "no-worker" and key in self.charged:
                self.placer.gpu.release(*self.charged.pop(key))
                ts.worker_restrictions = {HOLD}
                self._seq += 1
                heapq.heappush(self._ready, (ts.priority, self._seq, key))
        task_logger.debug("dispatched %d GPU task(s)", len(recs))

    def _periodic(self) -> None:
        if self._ready:
            self.dispatch()  # retries tasks bounced by paused workers
        self.check_unsatisfiable()

    # ---------------------------------------------------------------- maintenance
    def _sync_workers(self, scheduler: Scheduler) -> None:
        """Bring the placer's worker picture up to date (resources change at run time)."""
        placer = self.placer
        for addr, ws in scheduler.workers.items():
            info = placer.workers.get(addr)
            if info is None or info.resources != ws.resources or info.nthreads != ws.nthreads:
                placer.add_worker(_info(ws))
        if len(placer.workers) != len(scheduler.workers):
            for addr in [a for a in placer.workers if a not in scheduler.workers]:
                placer.remove_worker(addr)

    def _repin(self, scheduler: Scheduler, worker: str) -> None:
        """Re-place tasks pinned to a worker that left (new HRW owner, next GPU worker)."""
        moved = [k for k, a in self.pinned.items() if a == worker]
        recs: dict[Any, str] = {}
        for key in moved:
            ts = scheduler.tasks.get(key)
            if ts is None:
                self.pinned.pop(key, None)
                continue
            if ts.state in ("memory", "processing", "erred"):
                continue  # the scheduler re-runs it through released, then we see it here
            req = self.requirements.get(key)
            d = self.placer.decide(req, rootish=False, base_priority=0)
            ts.worker_restrictions = set(d.workers or ())
            if d.workers and len(d.workers) == 1:
                self.pinned[key] = next(iter(d.workers))
            else:
                self.pinned.pop(key, None)
            if ts.state == "no-worker" and d.workers:
                recs[key] = "processing"
        if recs:
            scheduler.transitions(recs, stimulus_id=f"swarmstore-repin-{time()}")
        if moved:
            logger.info("swarmstore re-placed %d task(s) of %s", len(moved), worker)

    def check_unsatisfiable(self) -> None:
        """Fail tasks that waited past the timeout for GPU resources no worker declares.

        Only resources swarmstore manages (``GPU``, ``GPU_MEMORY``) count: a task asking for
        any other resource nobody declares waits for a worker to join, as in stock Dask.
        One log line and one event per distinct requirement, however many tasks share it.
        """
        scheduler = self.scheduler
        if scheduler is None or self.unsatisfiable_timeout is None or not scheduler.unrunnable:
            return
        self._sync_workers(scheduler)  # resources may have changed (Worker.set_resources)
        now = monotonic()
        failed: dict[frozenset[tuple[str, float]], list[Any]] = {}
        unsat = self._unsat_since
        for ts in list(scheduler.unrunnable):
            needs = managed_needs(ts.resource_restrictions)
            if not needs or self.placer.capable(needs):
                unsat.pop(ts.key, None)
                continue  # someone could run it: busy, held or restricted, not ours to fail
            # counted from when we first saw no capable worker, not from entering no-worker:
            # a held GPU task may have waited long for a slot before its workers went away
            since = unsat.setdefault(ts.key, now)
            if now - since > self.unsatisfiable_timeout:
                failed.setdefault(frozenset(needs.items()), []).append(ts)
        for shape, tasks in failed.items():
            self._fail_unsatisfiable(scheduler, dict(shape), tasks)

    def _fail_unsatisfiable(
        self, scheduler: Scheduler, needs: dict[str, float], tasks: list[TaskState]
    ) -> None:
        msg = (
            f"needs resources {needs} but no worker of {len(scheduler.workers)} declares them "
            f"(waited {self.unsatisfiable_timeout:g}s; swarmstore.compute.unsatisfiable-timeout)."
            " Start workers with those resources, or install swarmstore's worker plugin "
            "(plugins/worker.py) so GPUs are declared."
        )
        stimulus_id = f"swarmstore-unsatisfiable-{time()}"
        recs: dict[Any, str] = {}
        for ts in tasks:
            exc = pickle.dumps(UnsatisfiableRequirements(f"task {ts.key!r} {msg}"))
            recs.update(
                scheduler.transition(
                    ts.key, "erred", exception=exc, cause=ts.key, stimulus_id=stimulus_id
                )
            )
            self._unsat_since.pop(ts.key, None)
        scheduler.transitions(recs, stimulus_id)
        keys = [ts.key for ts in tasks]
        self.placements.failed(len(keys))
        logger.error("%d task(s) failed: each %s", len(keys), msg)
        scheduler.log_event(
            "swarmstore",
            {"action": "unsatisfiable-failed", "resources": needs, "keys": keys},
        )
