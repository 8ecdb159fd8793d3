"""Scale GPU and CPU worker pools separately, from the resources queued tasks ask for.

Stock ``Adaptive`` returns one integer and ``SpecCluster.scale`` clones one worker spec
(dask/distributed#1851, dask-cuda#540), so a burst of GPU tasks adds CPU workers and the GPU
tasks stay ``no-worker``. :class:`SwarmAdaptive` keeps one :class:`Pool` per worker spec:

- demand per pool = tasks waiting, queued, unrunnable or processing whose resource
  restrictions the pool offers (tasks without restrictions belong to the pool that declares
  no resources);
- target = demand / slots per worker, clamped to the pool's bounds; scale-up is immediate,
  scale-down waits ``wait_count`` consecutive intervals and retires only idle workers of the
  pool, after every scheduler plugin's ``valid_workers_downscaling`` (so SwarmPlugin never
  lets it retire the last holder of a critical key).

It drives any ``SpecCluster`` (LocalCluster, dask-kubernetes' operator cluster, dask-jobqueue)
through ``cluster.worker_spec``: a new worker is a new entry named ``<pool>-<n>`` with that
pool's spec. :class:`PoolPlanner` makes every decision and knows nothing about Dask.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed.deploy.adaptive import Adaptive
from distributed.protocol.pickle import dumps

from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from distributed.deploy.spec import SpecCluster
    from distributed.scheduler import Scheduler

__all__ = ["Pool", "PoolPlanner", "PoolReport", "ScalePlan", "SwarmAdaptive", "pool_report"]

logger = logging.getLogger(__name__)

_DEMAND_STATES = ("waiting", "queued", "no-worker", "processing")


@dataclass(frozen=True)
class Pool:
    """One kind of worker: its SpecCluster spec and its bounds.

    ``resources`` defaults to the spec's ``options["resources"]``; ``slots`` (tasks one
    worker runs at once) to the amount of its first resource, or its ``nthreads``.
    """

    name: str
    spec: Mapping[str, Any]
    minimum: int = 0
    maximum: float = math.inf
    resources: Mapping[str, float] = field(default_factory=dict)
    slots: float = 0

    def __post_init__(self) -> None:
        if not self.name or "-" in self.name:
            raise ConfigError(f"pool name {self.name!r} must be non-empty without '-'")
        if self.minimum < 0 or self.maximum < self.minimum:
            raise ConfigError(f"pool {self.name!r}: need 0 <= minimum <= maximum")
        options = dict(self.spec.get("options", {}))
        if not self.resources:
            object.__setattr__(self, "resources", dict(options.get("resources") or {}))
        if not self.slots:
            first = next(iter(self.resources.values()), None)
            slots = first if first else options.get("nthreads", 1)
            object.__setattr__(self, "slots", float(slots))

    def serves(self, restrictions: Mapping[str, float] | None) -> bool:
        """Whether a task with these resource restrictions belongs here."""
        if not restrictions:
            return not self.resources
        return all(self.resources.get(r, 0) >= need for r, need in restrictions.items())


@dataclass
class PoolReport:
    """What the scheduler says about one pool (plain data, sent over the wire)."""

    demand: int = 0
    workers: list[str] = field(default_factory=list)  # connected worker names
    idle: list[str] = field(default_factory=list)
    closable: list[str] = field(default_factory=list)  # idle and allowed by every plugin


@dataclass
class ScalePlan:
    """Workers to add per pool and worker names to retire."""

    add: dict[str, int] = field(default_factory=dict)
    retire: list[str] = field(default_factory=list)


class PoolPlanner:
    """Turn demand into per-pool targets; all decisions, no Dask.

    >>> cpu = Pool("cpu", {"options": {"nthreads": 2}}, maximum=4)
    >>> gpu = Pool("gpu", {"options": {"resources": {"GPU": 1}}}, maximum=2)
    >>> planner = PoolPlanner([cpu, gpu], wait_count=1)
    >>> planner.plan({"cpu": PoolReport(demand=3), "gpu": PoolReport(demand=5)},
    ...              {"cpu": 0, "gpu": 0}).add
    {'cpu': 2, 'gpu': 2}
    """

    def __init__(self, pools: Sequence[Pool], wait_count: int = 3) -> None:
        names = [p.name for p in pools]
        if len(set(names)) != len(names) or not pools:
            raise ConfigError(f"pool names must be unique and non-empty: {names}")
        self.pools = {p.name: p for p in pools}
        self.wait_count = max(1, wait_count)
        self._low: dict[str, int] = {}

    def target(self, pool: Pool, demand: int) -> int:
        """Workers the pool should have for ``demand`` tasks."""
        want = math.ceil(demand / pool.slots) if demand else 0
        return int(min(pool.maximum, max(pool.minimum, want)))

    def plan(self, reports: Mapping[str, PoolReport], current: Mapping[str, int]) -> ScalePlan:
        """Scale up at once; scale down after ``wait_count`` consecutive low targets."""
        out = ScalePlan()
        for name, pool in self.pools.items():
            report = reports.get(name, PoolReport())
            have = current.get(name, 0)
            target = self.target(pool, report.demand)
            if target > have:
                out.add[name] = target - have
                self._low[name] = 0
            elif target < have:
                self._low[name] = self._low.get(name, 0) + 1
                if self._low[name] >= self.wait_count:
                    idle = [w for w in report.closable if w in set(report.idle)]
                    out.retire.extend(idle[: have - target])
                    self._low[name] = 0
            else:
                self._low[name] = 0
        return out


def pool_report(
    pools: Iterable[tuple[str, dict[str, float]]],
    names: Mapping[str, str],
    *,
    dask_scheduler: Scheduler,
) -> dict[str, dict[str, Any]]:
    """Run on the scheduler: demand, workers, idle and closable workers per pool.

    ``pools`` is ``[(name, resources), ...]`` in priority order; ``names`` maps worker
    names (as strings) to their pool when the deployment knows it.
    """
    pools = list(pools)
    spec = [Pool(n, {"options": {"resources": r}}, resources=r) for n, r in pools]
    out = {n: PoolReport() for n, _ in pools}

    def pool_of(restrictions: Mapping[str, float] | None) -> str | None:
        return next((p.name for p in spec if p.serves(restrictions)), None)

    for ts in dask_scheduler.tasks.values():
        if ts.state in _DEMAND_STATES:
            name = pool_of(ts.resource_restrictions)
            if name is not None:
                out[name].demand += 1
    by_address: dict[str, str] = {}
    for addr, ws in dask_scheduler.workers.items():
        name = names.get(str(ws.name)) or pool_of(ws.resources or None)
        if name is None:
            continue
        out[name].workers.append(str(ws.name))
        by_address[addr] = name
        if not ws.processing and not ws.long_running:
            out[name].idle.append(str(ws.name))
    valid = [
        ws
        for ws in dask_scheduler.workers.values()
        if ws.address in by_address and not ws.processing
    ]
    for plugin in list(dask_scheduler.plugins.values()):
        valid = plugin.valid_workers_downscaling(dask_scheduler, valid)
    for ws in valid:
        out[by_address[ws.address]].closable.append(str(ws.name))
    return {n: vars(r) for n, r in out.items()}


class SwarmAdaptive(Adaptive):
    """Adaptive scaling with one pool per worker spec (GPU and CPU scale separately).

    Parameters
    ----------
    cluster : SpecCluster
        Any SpecCluster-style deployment; new workers are entries of ``cluster.worker_spec``.
    pools : sequence of Pool
        In priority order: a task goes to the first pool that offers its resources.
    interval, wait_count : as :class:`distributed.deploy.Adaptive`.

    Notes
    -----
    Runs on the cluster's event loop, one adaptation at a time. Start it with
    ``SwarmAdaptive(cluster, pools)`` (not ``cluster.adapt``, which wants one spec).

    Examples
    --------
    >>> from distributed import Worker
    >>> pools = [
    ...     Pool("cpu", {"cls": Worker, "options": {"nthreads": 1}}, minimum=1, maximum=8),
    ...     Pool("gpu", {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
    ...          maximum=2),
    ... ]
    >>> planner = PoolPlanner(pools)
    """

    def __init__(
        self,
        cluster: SpecCluster,
        pools: Sequence[Pool],
        *,
        interval: str | float | None = None,
        wait_count: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.planner = PoolPlanner(pools, wait_count=wait_count or 3)
        self._counter = 0
        super().__init__(
            cluster,
            interval=interval,
            minimum=0,
            maximum=math.inf,
            wait_count=wait_count,
            **kwargs,
        )

    @property
    def pools(self) -> dict[str, Pool]:
        return self.planner.pools

    def pool_of_spec(self, name: Any, spec: Mapping[str, Any]) -> str | None:
        """The pool a ``worker_spec`` entry belongs to: by name prefix, else by resources."""
        prefix = str(name).split("-", 1)[0]
        if prefix in self.pools and str(name) != prefix:
            return prefix
        resources = dict(spec.get("options", {}).get("resources") or {})
        return next((p.name for p in self.pools.values() if p.resources == resources), None)

    def current(self) -> dict[str, int]:
        """Workers planned per pool (launched or not yet)."""
        counts = dict.fromkeys(self.pools, 0)
        for name, spec in self.cluster.worker_spec.items():
            pool = self.pool_of_spec(name, spec)
            if pool is not None:
                counts[pool] += 1
        return counts

    async def report(self) -> dict[str, PoolReport]:
        """Ask the scheduler for demand and closable workers per pool."""
        names = {
            str(n): p
            for n, s in self.cluster.worker_spec.items()
            if (p := self.pool_of_spec(n, s)) is not None
        }
        pools = [(p.name, dict(p.resources)) for p in self.pools.values()]
        response = await self.cluster.scheduler_comm.run_function(
            function=dumps(pool_report),
            args=dumps((pools, names)),
            kwargs=dumps({}),
        )
        if response.get("status") != "OK":
            raise RuntimeError(f"pool report failed on the scheduler: {response}")
        return {n: PoolReport(**r) for n, r in response["result"].items()}

    async def adapt(self) -> None:
        """One round: report, plan, add specs, retire idle workers."""
        if getattr(self, "_adapting", False):
            return
        self._adapting = True
        try:
            plan = self.planner.plan(await self.report(), self.current())
            await self.apply(plan)
        finally:
            self._adapting = False

    async def apply(self, plan: ScalePlan) -> None:
        """Enact a plan on the cluster: new specs, then clean retirement."""
        for pool, n in plan.add.items():
            for _ in range(n):
                self.cluster.worker_spec[self._new_name(pool)] = dict(self.pools[pool].spec)
            logger.info("SwarmAdaptive: adding %d %s worker(s)", n, pool)
        if plan.retire:
            logger.info("SwarmAdaptive: retiring %s", plan.retire)
            retired = await self.cluster.scheduler_comm.retire_workers(
                # the cluster closes retired workers itself (SpecCluster._correct_state);
                # closing them here too raced it (closing -> closing_gracefully errors)
                names=plan.retire,
                remove=True,
                close_workers=False,
            )
            # a retirement the scheduler refused (no recipient for a unique key) stays up
            for name in {str(info.get("name")) for info in (retired or {}).values()}:
                for key in [k for k in self.cluster.worker_spec if str(k) == name]:
                    del self.cluster.worker_spec[key]
        if plan.add or plan.retire:
            await self.cluster._correct_state()

    def _new_name(self, pool: str) -> str:
        while True:
            self._counter += 1
            name = f"{pool}-{self._counter}"
            if name not in self.cluster.worker_spec:
                return name
