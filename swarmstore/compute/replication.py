"""Keep critical results at N copies on distinct hosts, so a lost worker costs no recomputation.

:class:`ReplicationController` is the thin scheduler-side object SwarmPlugin forwards its
hooks to. It tracks desired counts from ``swarm`` annotations (``critical``, ``replicas``),
asks for the copies the moment a tracked key reaches memory (closing the AMM's 2-second gap)
and again when a holder leaves, and narrows downscaling so the last holder of a tracked key,
or the last GPU worker, never retires. Keeping the counts over time is the job of
:class:`~swarmstore.compute._replica_policy.HonourReplicaCounts`, a policy of the scheduler's
own Active Memory Manager: it joins that AMM while some key asks for copies, runs at the
AMM's interval, and does nothing when the user turns the AMM off. Stock ``ReduceReplicas``
stays in the AMM and governs every key nobody marked.

:class:`ReplicationPlugin` wraps the controller as a stand-alone ``SchedulerPlugin`` for
clusters that run replication without the rest of SwarmPlugin.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import time

from swarmstore import _events, config, metrics
from swarmstore.compute._figures import (
    REPLICATION_FAMILIES,
    replication_figures,
    replication_metric_figures,
)
from swarmstore.compute._replica_policy import (
    Candidate,
    HonourReplicaCounts,
    desired_replicas,
    narrow_downscaling,
    pick_recipients,
    recipients_for,
    shield,
    unshield,
)
from swarmstore.errors import PlacementError

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler, TaskState, WorkerState

__all__ = [
    "Candidate",
    "HonourReplicaCounts",
    "ReplicationController",
    "ReplicationPlugin",
    "desired_replicas",
    "narrow_downscaling",
    "pick_recipients",
]

logger = logging.getLogger(__name__)
# Per-key detail; very verbose at DEBUG
key_logger = logging.getLogger(__name__ + ".keys")


class ReplicationController:
    """Scheduler-side replication: the object SwarmPlugin forwards its hooks to.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The scheduler whose keys are kept replicated.
    plugin : object, optional
        The host plugin; its ``requirements`` mapping (key -> parsed ``swarm`` annotation), when
        present, is read as a second source of desired counts.
    default_replicas : int, optional
        Copies of a key annotated ``critical`` without a count; default
        ``swarmstore.replication.default-replicas``.
    keep_last_gpu : bool, optional
        Refuse downscaling that retires the last GPU worker; default
        ``swarmstore.replication.keep-last-gpu``.
    interval : optional
        Deprecated and ignored: the policy runs at the scheduler AMM's interval.

    Notes
    -----
    Every method runs on the scheduler's event loop; nothing here is thread-safe, nor needs
    to be. The policy lives in the scheduler's Active Memory Manager
    (``scheduler.extensions["amm"]``) only while :attr:`desired` is not empty.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        plugin: Any = None,
        *,
        default_replicas: int | None = None,
        keep_last_gpu: bool | None = None,
        interval: Any = None,
    ) -> None:
        if interval is not None:
            warnings.warn(
                "ReplicationController(interval=) is ignored: the replication policy runs "
                "in the scheduler's Active Memory Manager, at "
                "distributed.scheduler.active-memory-manager.interval",
                DeprecationWarning,
                stacklevel=2,
            )
        self.scheduler = scheduler
        self.plugin = plugin
        self.default_replicas: int = config.value("replication.default-replicas", default_replicas)
        self.keep_last_gpu: bool = config.value("replication.keep-last-gpu", keep_last_gpu)
        if config.value("replication.interval") != 2.0:
            warnings.warn(
                "swarmstore.replication.interval is ignored: the replication policy runs in "
                "the scheduler's Active Memory Manager, at "
                "distributed.scheduler.active-memory-manager.interval",
                DeprecationWarning,
                stacklevel=2,
            )
        #: Desired copies of each tracked key (only counts >= 2 are tracked)
        self.desired: dict[Key, int] = {}
        #: Replicas requested by the fast path and not yet confirmed: key -> {address: deadline}
        self.inflight: dict[Key, dict[str, float]] = {}
        #: Replica requests sent by the fast path (a counter for tests and dashboards)
        self.fast_requests = 0
        #: Tracked keys that lost every copy while still wanted (so they are recomputed)
        self.lost = 0
        self.policy = HonourReplicaCounts(
            self.desired, fresh_hosts=self.fresh_host_workers, in_flight=self.inflight_count
        )
        self._started = False
        self._fresh: list[Key] = []
        self._flush_handle: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"ReplicationController(tracked={len(self.desired)})"

    @property
    def manager(self) -> Any:
        """The scheduler's Active Memory Manager (``None`` if the extension is not loaded)."""
        return self.scheduler.extensions.get("amm")

    # ---- lifecycle
    async def start(self) -> None:
        """Track keys that predate us; the policy joins the AMM with the first tracked key."""
        self._started = True
        metrics.register_source(
            f"replication@{id(self)}",
            self._metric_figures,
            REPLICATION_FAMILIES,
            owner=self.scheduler,
        )
        for ts in list(self.scheduler.tasks.values()):
            self._track(ts.key)
        logger.debug("Replication started: %s", self)

    async def close(self) -> None:
        """Leave the AMM; its ``ReduceReplicas`` sees every key again."""
        self._started = False
        metrics.unregister_source(f"replication@{id(self)}")
        self._leave()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _join(self) -> None:
        manager = self.manager
        if manager is None or not self._started:
            return
        if self.policy not in manager.policies:
            manager.add_policy(self.policy)
            logger.debug("Replication policy joined the AMM: %s", self.policy)
        shield(manager, self.desired)

    def _leave(self) -> None:
        manager = self.manager
        if manager is None:
            return
        manager.policies.discard(self.policy)
        unshield(manager)

    # ---- hooks forwarded by the host plugin
    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        keys: Iterable[Key] = (),
        annotations: Any = None,
        **kwargs: Any,
    ) -> None:
        """Record desired counts from the graph's ``swarm`` annotations before it runs."""
        swarm = (annotations or {}).get("swarm") or {}
        for key, ann in swarm.items():
            self._track(key, ann)

    def transition(self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A tracked key reaching memory gets its replicas requested at once."""
        if finish == "memory":
            if self._track(key):
                self._queue(key)
        elif finish in ("released", "erred", "forgotten"):
            self.inflight.pop(key, None)
            if start == "memory" and key in self.desired:
                self._note_lost(key)
            if finish == "forgotten" and self.desired.pop(key, None) and not self.desired:
                self._leave()

    def add_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """A new worker is a new place for copies of keys that could not get one."""
        self._queue_under_replicated()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """Forget replicas in flight to ``worker``; re-replicate keys that lost a copy now."""
        for targets in self.inflight.values():
            targets.pop(worker, None)
        short = self._queue_under_replicated()
        if short:
            msg = {"worker": worker, "under_replicated": short}
            _events.emit("replicas-lost", msg, server=scheduler)

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        """Narrow ``workers`` so no tracked key loses its last holder and a GPU worker stays."""
        holders: dict[Hashable, set[str]] = {}
        for key in self.desired:
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.state == "memory" and ts.who_has:
                holders[key] = {ws.address for ws in ts.who_has}
        gpus = {a for a, ws in scheduler.workers.items() if ws.resources.get("GPU", 0) > 0}
        keep = set(
            narrow_downscaling(
                [ws.address for ws in workers], holders, gpus, keep_last_gpu=self.keep_last_gpu
            )
        )
        return [ws for ws in workers if ws.address in keep]

    # ---- helpers the policy uses
    def inflight_count(self, ts: TaskState) -> int:
        """Fast-path replicas of ``ts`` requested, not yet arrived and not expired."""
        targets = self.inflight.get(ts.key)
        if not targets:
            return 0
        now = time()
        holders = {ws.address for ws in ts.who_has or ()}
        for addr in [a for a, deadline in targets.items() if deadline < now or a in holders]:
            del targets[addr]
        return len(targets)

    def fresh_host_workers(self, ts: TaskState) -> set[WorkerState] | None:
        """Running workers on hosts holding no copy of ``ts``; ``None`` (any worker) if none."""
        hosts = {ws.host for ws in ts.who_has or ()}
        fresh = {ws for ws in self.scheduler.running if ws.host not in hosts}
        return fresh or None

    def figures(self) -> dict[str, int]:
        """Tracked keys, under-replicated keys and their missing copies, replicas
        requested by the fast path, keys lost (a :mod:`swarmstore.metrics` source)."""
        return replication_figures(
            self.desired, self.scheduler.tasks, requested=self.fast_requests, lost=self.lost
        )

    def _metric_figures(self) -> dict[str, Any]:
        return replication_metric_figures(self.figures())

    # ---- internals
    def _track(self, key: Key, annotation: Any = None) -> int | None:
        """Desired count of ``key`` (tracked when >= 2), from the annotation or the task."""
        if annotation is None:
            if key in self.desired:
                return self.desired[key]
            annotation = self._annotation_of(key)
        try:
            n = desired_replicas(annotation, self.default_replicas)
        except PlacementError:
            logger.warning("Ignoring bad replication annotation on %r: %r", key, annotation)
            return None
        if n is None or n < 2:
            return None
        self.desired[key] = n
        self._join()
        return n

    def _annotation_of(self, key: Key) -> Any:
        reqs = getattr(self.plugin, "requirements", None)
        if isinstance(reqs, Mapping) and reqs.get(key) is not None:
            return reqs[key]
        ts = self.scheduler.tasks.get(key)
        annotations = getattr(ts, "annotations", None) or {}
        return annotations.get("swarm")

    def _queue(self, key: Key) -> None:
        self._fresh.append(key)
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        # after the current batch of transitions, never from inside one
        self._flush_handle = loop.call_soon(self._flush)

    def _queue_under_replicated(self) -> int:
        queued = 0
        for key, n in self.desired.items():
            ts = self.scheduler.tasks.get(key)
            if ts is not None and ts.state == "memory" and len(ts.who_has or ()) < n:
                self._queue(key)
                queued += 1
        return queued

    def _note_lost(self, key: Key) -> None:
        """A tracked key left memory: lost, if a client or a dependent still wants it."""
        ts = self.scheduler.tasks.get(key)
        if ts is None or not (ts.who_wants or ts.waiters):
            return  # released because nobody needs it any more
        self.lost += 1
        msg = {"key": key, "replicas": self.desired[key]}
        _events.emit("critical-key-lost", msg, server=self.scheduler)

    def _in_flight_deadline(self) -> float:
        manager = self.manager
        interval = float(getattr(manager, "interval", 2.0) or 2.0)
        return time() + max(5.0, 3 * interval)

    def _flush(self) -> None:
        self._flush_handle = None
        keys, self._fresh = self._fresh, []
        by_worker: defaultdict[str, list[Key]] = defaultdict(list)
        deadline = self._in_flight_deadline()
        for key in dict.fromkeys(keys):
            for addr in self._recipients(key):
                by_worker[addr].append(key)
                self.inflight.setdefault(key, {})[addr] = deadline
        stimulus_id = f"swarm-replicate-{time()}"
        for addr, ks in by_worker.items():
            key_logger.debug("Fast path: %s to acquire %s", addr, ks)
            self.scheduler.request_acquire_replicas(addr, ks, stimulus_id=stimulus_id)
            self.fast_requests += len(ks)

    def _recipients(self, key: Key) -> list[str]:
        """Workers that should fetch a copy of ``key`` now (fresh hosts first)."""
        ts = self.scheduler.tasks.get(key)
        n = self.desired.get(key)
        if ts is None or n is None or ts.state != "memory" or not ts.who_has:
            return []
        return recipients_for(
            ts,
            n - len(ts.who_has) - self.inflight_count(ts),
            self.inflight.get(key, {}),
            self.scheduler.workers,
            self.scheduler.running,
        )


# --------------------------------------------------------------------------- stand-alone plugin
class ReplicationPlugin(SchedulerPlugin):
    """Replication alone, as a scheduler plugin (SwarmPlugin includes it already).

    Examples
    --------
    >>> plugin = ReplicationPlugin(default_replicas=3)
    >>> plugin.name
    'swarmstore-replication'

    ``await client.register_plugin(plugin)`` then keeps every key annotated
    ``dask.annotate(swarm={"critical": True})`` at three copies.
    """

    name = "swarmstore-replication"
    idempotent = True

    def __init__(self, **controller_kwargs: Any) -> None:
        self.controller_kwargs = controller_kwargs
        self.controller: ReplicationController | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self.controller = ReplicationController(scheduler, None, **self.controller_kwargs)
        await self.controller.start()

    async def close(self) -> None:
        if self.controller is not None:
            await self.controller.close()

    def update_graph(self, scheduler: Scheduler, **kwargs: Any) -> None:
        if self.controller is not None:
            self.controller.update_graph(scheduler, **kwargs)

    def transition(self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if self.controller is not None:
            self.controller.transition(key, start, finish, *args, **kwargs)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        if self.controller is not None:
            self.controller.add_worker(scheduler, worker)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        if self.controller is not None:
            self.controller.remove_worker(scheduler, worker, **kwargs)

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        if self.controller is None:
            return workers
        return self.controller.valid_workers_downscaling(scheduler, workers)
