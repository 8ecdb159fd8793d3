"""Keep critical results at N copies on distinct hosts, so a lost worker costs no recomputation.

Three layers, each testable alone:

- plain decisions (:func:`desired_replicas`, :func:`pick_recipients`, :func:`narrow_downscaling`)
  that know nothing about Dask;
- :class:`HonourReplicaCounts`, an Active Memory Manager policy that replaces the stock
  ``ReduceReplicas`` (which hard-codes one desired copy and fights any policy keeping two:
  copies flip 2,1,2,1). It adds missing replicas of tracked keys and trims every other key
  to one copy (or to the number of workers with dependents waiting, as stock does);
- :class:`ReplicationController`, the thin scheduler-side object that SwarmPlugin forwards its
  hooks to: it tracks desired counts from ``ts.annotations["swarm"]``, requests replicas the
  moment a critical key reaches memory (closing the AMM's 2-second gap) and refuses
  downscaling that would retire the last holder of a critical key or the last GPU worker.

:class:`ReplicationPlugin` wraps the controller as a stand-alone ``SchedulerPlugin`` for
clusters that run replication without the rest of SwarmPlugin.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import (
    ActiveMemoryManagerExtension,
    ActiveMemoryManagerPolicy,
    ReduceReplicas,
    Suggestion,
    SuggestionGenerator,
)
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import time

from swarmstore import _events, config
from swarmstore.errors import PlacementError

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler, TaskState, WorkerState

__all__ = [
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


# --------------------------------------------------------------------------- decisions
def desired_replicas(annotation: Any, default: int) -> int | None:
    """Copies wanted for a task from its ``swarm`` annotation, or ``None`` if not tracked.

    ``{"replicas": N}`` asks for N copies; ``{"critical": True}`` for ``default`` copies.
    Anything else (no annotation, ``critical: False``) is not tracked.

    >>> desired_replicas({"critical": True}, 2), desired_replicas({"replicas": 3}, 2)
    (2, 3)
    >>> desired_replicas({"persist": True}, 2) is None
    True
    """
    if annotation is None:
        return None
    if isinstance(annotation, Mapping):
        get = annotation.get
    else:  # a parsed requirements object from SwarmPlugin
        def get(name: str, default_: Any = None) -> Any:
            return getattr(annotation, name, default_)

    n = get("replicas")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlacementError(f"swarm annotation replicas={n!r} must be an integer >= 1")
        return n
    if get("critical"):
        return max(1, int(default))
    return None


@dataclass(frozen=True)
class Candidate:
    """A worker that could receive a replica: its address, host and current memory."""

    address: str
    host: str
    memory: int = 0


def pick_recipients(
    holder_hosts: Iterable[str], candidates: Sequence[Candidate], n: int
) -> list[str]:
    """Choose ``n`` recipients, on hosts that hold no copy yet while such hosts remain.

    Within a tier the least loaded worker wins; each pick's host counts as used, so two
    new copies do not land on one host when another host is free.

    >>> cands = [Candidate("a", "h1", 10), Candidate("b", "h2", 50), Candidate("c", "h2", 0)]
    >>> pick_recipients({"h1"}, cands, 2)
    ['c', 'a']
    """
    used = set(holder_hosts)
    left = sorted(candidates, key=lambda c: (c.memory, c.address))
    picked: list[str] = []
    while left and len(picked) < n:
        best = next((c for c in left if c.host not in used), left[0])
        left.remove(best)
        used.add(best.host)
        picked.append(best.address)
    return picked


def narrow_downscaling(
    proposed: Sequence[str],
    holders: Mapping[Hashable, set[str]],
    gpu_workers: set[str],
    *,
    keep_last_gpu: bool = True,
) -> list[str]:
    """The subset of ``proposed`` that may retire together without losing anything we guard.

    A worker stays if retiring it (with the workers already accepted) would leave a tracked
    key with no holder, or, with ``keep_last_gpu``, the cluster with no GPU worker.
    Order is preserved; the earliest proposals win.

    >>> narrow_downscaling(["a", "b"], {"k": {"a", "b"}}, set())
    ['a']
    """
    by_worker: defaultdict[str, list[Hashable]] = defaultdict(list)
    for key, who in holders.items():
        for addr in who:
            by_worker[addr].append(key)
    leaving: set[str] = set()
    out: list[str] = []
    for addr in proposed:
        gone = leaving | {addr}
        if any(not (holders[k] - gone) for k in by_worker.get(addr, ())):
            continue
        if keep_last_gpu and addr in gpu_workers and not (gpu_workers - gone):
            continue
        leaving.add(addr)
        out.append(addr)
    return out


# --------------------------------------------------------------------------- AMM policy
class HonourReplicaCounts(ActiveMemoryManagerPolicy):
    """Add replicas of tracked keys up to their desired count; trim every key above it.

    Replaces stock ``ReduceReplicas``: untracked keys are trimmed exactly as stock trims
    them (to one copy, or to the number of workers with dependents waiting on the key);
    tracked keys keep ``controller.desired[key]`` copies, new ones on hosts that hold none,
    and surplus copies leave hosts that hold two first.
    """

    __slots__ = ("controller",)

    def __init__(self, controller: ReplicationController) -> None:
        self.controller = controller

    def __repr__(self) -> str:
        return f"HonourReplicaCounts(tracked={len(self.controller.desired)})"

    def run(self) -> SuggestionGenerator:
        yield from self._replicate()
        yield from self._trim()

    def _replicate(self) -> SuggestionGenerator:
        ctl = self.controller
        for key, n in list(ctl.desired.items()):
            ts = ctl.scheduler.tasks.get(key)
            if ts is None or ts.state != "memory" or not ts.who_has:
                continue
            pending_repl = self.manager.pending.get(ts, (set(), set()))[0]
            missing = n - len(ts.who_has) - len(pending_repl) - ctl.inflight_count(ts)
            for _ in range(missing):
                choice = yield Suggestion("replicate", ts, ctl.fresh_host_workers(ts))
                if choice is None:
                    break
                key_logger.debug("AMM: replicating %s to %s", key, choice.address)

    def _trim(self) -> SuggestionGenerator:
        desired = self.controller.desired
        for ts in list(self.manager.scheduler.replicated_tasks):
            want = desired.get(ts.key, 1)
            nwaiters = len(ts.waiters or ())
            if want < nwaiters < 20:  # as stock: keep a copy per worker with a waiter
                nwaiters = len({w.processing_on or w for w in ts.waiters or ()})
            ndrop = len(ts.who_has or ()) - max(want, nwaiters)
            if ts in self.manager.pending:
                pending_repl, pending_drop = self.manager.pending[ts]
                ndrop += len(pending_repl) - len(pending_drop)
            for _ in range(ndrop):
                yield Suggestion("drop", ts, _crowded_holders(ts) if want > 1 else None)


def _crowded_holders(ts: TaskState) -> set[WorkerState] | None:
    """Holders that share a host with another holder (the first to drop), or ``None``."""
    per_host: defaultdict[str, set[WorkerState]] = defaultdict(set)
    for ws in ts.who_has or ():
        per_host[ws.host].add(ws)
    crowded = {ws for group in per_host.values() if len(group) > 1 for ws in group}
    return crowded or None


# --------------------------------------------------------------------------- controller
class ReplicationController:
    """Scheduler-side replication: the object SwarmPlugin forwards its hooks to.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The scheduler whose keys are kept replicated.
    plugin : object, optional
        The host plugin; its ``requirements`` mapping (key -> parsed ``swarm`` annotation), when
        present, is read as a second source of desired counts.
    interval : float or str, optional
        Period of the replication policy; default ``swarmstore.replication.interval``.
    default_replicas : int, optional
        Copies of a key annotated ``critical`` without a count; default
        ``swarmstore.replication.default-replicas``.
    keep_last_gpu : bool, optional
        Refuse downscaling that retires the last GPU worker; default
        ``swarmstore.replication.keep-last-gpu``.

    Notes
    -----
    Every method runs on the scheduler's event loop; nothing here is thread-safe, nor needs
    to be. The policy runs in its own Active Memory Manager (at ``interval``) while the
    scheduler's main AMM keeps every other policy (``RetireWorker`` ...) minus the stock
    ``ReduceReplicas``, which :meth:`start` removes and :meth:`close` puts back.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        plugin: Any = None,
        *,
        interval: float | str | None = None,
        default_replicas: int | None = None,
        keep_last_gpu: bool | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.plugin = plugin
        self.interval = config.get_seconds("replication.interval", interval) or 2.0
        self.default_replicas = int(
            config.get("replication.default-replicas") if default_replicas is None
            else default_replicas
        )
        self.keep_last_gpu = bool(
            config.get("replication.keep-last-gpu", True) if keep_last_gpu is None
            else keep_last_gpu
        )
        #: Desired copies of each tracked key (only counts >= 2 are tracked)
        self.desired: dict[Key, int] = {}
        #: Replicas requested by the fast path and not yet confirmed: key -> {address: deadline}
        self.inflight: dict[Key, dict[str, float]] = {}
        #: Replica requests sent by the fast path (a counter for tests and dashboards)
        self.fast_requests = 0
        #: Tracked keys that lost every copy while still wanted (so they are recomputed)
        self.lost = 0
        self.policy = HonourReplicaCounts(self)
        self.manager: ActiveMemoryManagerExtension | None = None
        self._removed: list[ActiveMemoryManagerPolicy] = []
        self._fresh: list[Key] = []
        self._flush_handle: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"ReplicationController(tracked={len(self.desired)}, interval={self.interval}s)"

    # ---- lifecycle
    async def start(self) -> None:
        """Swap stock ``ReduceReplicas`` for :class:`HonourReplicaCounts` and start it."""
        if self.manager is not None:
            return
        main = self.scheduler.extensions.get("amm")
        if main is not None:
            self._removed = [p for p in main.policies if type(p) is ReduceReplicas]
            for p in self._removed:
                main.policies.discard(p)
        self.manager = ActiveMemoryManagerExtension(
            self.scheduler, {self.policy}, register=False, start=True, interval=self.interval
        )
        for ts in self.scheduler.tasks.values():  # keys that predate us
            self._track(ts.key)
        logger.debug("Replication started: %s", self)

    async def close(self) -> None:
        """Stop the policy and give the scheduler's main AMM its ``ReduceReplicas`` back."""
        if self.manager is not None:
            self.manager.stop()
            self.manager = None
        main = self.scheduler.extensions.get("amm")
        if main is not None:
            for p in self._removed:
                main.add_policy(p)
        self._removed = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # ---- hooks forwarded by the host plugin
    def update_graph(
        self, scheduler: Scheduler, *, keys: Iterable[Key] = (), annotations: Any = None,
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
            if finish == "forgotten":
                self.desired.pop(key, None)

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

    def figures(self) -> dict[str, int]:
        """Tracked keys, under-replicated keys and their missing copies, replicas
        requested by the fast path, keys lost (read by :mod:`swarmstore.metrics`)."""
        under = missing = 0
        tasks = self.scheduler.tasks
        for key, n in self.desired.items():
            ts = tasks.get(key)
            if ts is not None and ts.state == "memory" and len(ts.who_has or ()) < n:
                under += 1
                missing += n - len(ts.who_has or ())
        return {
            "tracked": len(self.desired),
            "under_replicated": under,
            "missing": missing,
            "requested": self.fast_requests,
            "lost": self.lost,
        }

    def _flush(self) -> None:
        self._flush_handle = None
        keys, self._fresh = self._fresh, []
        by_worker: defaultdict[str, list[Key]] = defaultdict(list)
        deadline = time() + max(5.0, 3 * self.interval)
        for key in dict.fromkeys(keys):
            ts = self.scheduler.tasks.get(key)
            n = self.desired.get(key)
            if ts is None or n is None or ts.state != "memory" or not ts.who_has:
                continue
            missing = n - len(ts.who_has) - self.inflight_count(ts)
            if missing <= 0:
                continue
            targets = self.inflight.setdefault(key, {})
            hosts = {ws.host for ws in ts.who_has}
            hosts.update(self.scheduler.workers[a].host for a in targets
                         if a in self.scheduler.workers)
            cands = [
                Candidate(ws.address, ws.host, ws.nbytes)
                for ws in self.scheduler.running
                if ws not in ts.who_has and ws.address not in targets
                and ws.status == Status.running
            ]
            for addr in pick_recipients(hosts, cands, missing):
                by_worker[addr].append(key)
                targets[addr] = deadline
        stimulus_id = f"swarm-replicate-{time()}"
        for addr, ks in by_worker.items():
            key_logger.debug("Fast path: %s to acquire %s", addr, ks)
            self.scheduler.request_acquire_replicas(addr, ks, stimulus_id=stimulus_id)
            self.fast_requests += len(ks)


# --------------------------------------------------------------------------- stand-alone plugin
class ReplicationPlugin(SchedulerPlugin):
    """Replication alone, as a scheduler plugin (SwarmPlugin includes it already).

    Examples
    --------
    >>> plugin = ReplicationPlugin(interval="50ms")
    >>> plugin.name
    'swarmstore-replication'

    ``await client.register_plugin(plugin)`` then keeps every key annotated
    ``dask.annotate(swarm={"critical": True})`` at two copies.
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
