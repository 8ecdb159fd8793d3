"""Placement decisions: where a task may run, as plain objects tested without a cluster.

:class:`Placer` holds a picture of the workers (their declared resources) and the GPU work
committed to each, and answers one question per task: which restrictions and priority should
it get? :class:`~swarmstore.compute.plugin.SwarmPlugin` applies the answers in the scheduler's
``update_graph`` hook, the only one that runs before a task's first transition.

Rules, in order:

1. A task whose resources no worker declares gets no pin; it waits in ``no-worker`` and fails
   after ``swarmstore.compute.unsatisfiable-timeout`` (the plugin does that).
2. A chunk task (``swarm={"chunk": key}``) is pinned to the rendezvous-hash owner of its chunk
   among the workers that can run it, so a second pass reads the same worker's cache. The
   ring knows workers by name, not address: a worker restarted on a new port (same name)
   keeps its chunks, and so its warm disk cache.
3. A GPU task is held (restricted to :data:`HOLD`, so once ready it parks in ``no-worker``)
   and dispatched by :meth:`Placer.dispatch` to the GPU worker with the least GPU work in
   flight per GPU slot (then per byte of GPU memory), as long as that stays within
   ``1 + prefetch`` times its GPUs. Dask checks only declared totals (dask/distributed#6467)
   and would send every GPU task at once, making a GPU worker with spare threads look busy
   to the root-task queue; balancing by free slots is ours. :class:`GpuBalancer` keeps one
   heap per worker shape, so a pick costs ``O(shapes * log workers)``, flat as the cluster
   grows.
4. A CPU task that is not root-ish and asks for no resources goes to CPU workers, loosely: when
   they are saturated work stealing may still move it to an idle GPU worker (stealing honours
   loose restrictions), and with no CPU worker left it runs anywhere.
   Root-ish CPU tasks stay unrestricted, so the scheduler's root-task queue (which feeds only
   idle workers) keeps working for them (restrictions disable queuing, #9164).
5. GPU tasks and the tasks that feed them get half a priority step more than their graph gave
   them: they do not wait behind work that could run elsewhere or later, and an explicit
   integer priority still dominates.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from swarmstore.compute.requirements import GPU, GPU_MEMORY, Requirements
from swarmstore.hashing import Member, Rendezvous

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping

__all__ = [
    "FEEDER_BOOST",
    "HOLD",
    "Decision",
    "GpuBalancer",
    "Placer",
    "WorkerInfo",
    "gpu_ancestors",
]

#: The worker restriction of a held GPU task: no worker has this address, so the scheduler
#: parks the task in ``no-worker`` once it is ready, until SwarmPlugin dispatches it
HOLD = "swarmstore-held-for-a-gpu-slot"

#: Priority added to GPU tasks and their feeders (a fraction: explicit priorities dominate)
FEEDER_BOOST = 0.5


@dataclass(frozen=True)
class WorkerInfo:
    """What placement needs to know of a worker: address, threads, declared resources."""

    address: str
    nthreads: int = 1
    resources: Mapping[str, float] = field(default_factory=dict)
    #: Stable identity for chunk affinity: the worker's name (kept across restarts on a new
    #: port); the address when the worker has no name of its own
    identity: str = ""

    @property
    def key(self) -> str:
        """What the chunk ring knows the worker by."""
        return self.identity or self.address

    @property
    def gpus(self) -> float:
        return float(self.resources.get(GPU, 0))

    @property
    def is_gpu(self) -> bool:
        """Declares at least one GPU."""
        return self.gpus > 0

    def can_run(self, needs: Mapping[str, float]) -> bool:
        """Whether the declared totals cover ``needs`` (what Dask itself checks)."""
        return all(self.resources.get(r, 0) >= n for r, n in needs.items())


@dataclass(frozen=True)
class Decision:
    """What to set on one task. ``None`` fields leave the task as the graph made it."""

    #: Worker restrictions (addresses)
    workers: frozenset[str] | None = None
    #: Whether Dask may ignore ``workers`` when none of them can take the task
    loose: bool = False
    #: Resource restrictions
    resources: Mapping[str, float] | None = None
    #: Dask user priority to apply (larger runs first); may be fractional
    priority: float | None = None
    #: No worker declares the resources: the task will wait, then fail
    unsatisfiable: bool = False
    #: A GPU task: the plugin holds it (restricted to :data:`HOLD`) until :meth:`Placer.dispatch`
    #: names a GPU worker with a free slot
    hold: bool = False


class GpuBalancer:
    """Committed GPU work per GPU worker; picks the least loaded worker that fits a task.

    Load is ``(gpu units committed / GPU slots, GPU memory committed / GPU memory)``. Workers
    with the same declared (GPU, GPU_MEMORY) share a heap with lazy deletion.

    >>> b = GpuBalancer()
    >>> b.add("a", {"GPU": 1}); b.add("b", {"GPU": 4})
    >>> picks = []
    >>> for _ in range(5):
    ...     picks.append(b.pick({"GPU": 1}))
    ...     b.assign(picks[-1], {"GPU": 1})
    >>> sorted(picks)
    ['a', 'b', 'b', 'b', 'b']
    """

    def __init__(self) -> None:
        self.capacity: dict[str, tuple[float, float]] = {}
        self.used: dict[str, list[float]] = {}
        self._heaps: dict[tuple[float, float], list[tuple[float, float, int, str]]] = {}
        self._version: dict[str, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self.capacity)

    def _load(self, addr: str) -> tuple[float, float]:
        gpus, mem = self.capacity[addr]
        u_gpu, u_mem = self.used[addr]
        return u_gpu / gpus, (u_mem / mem if mem else 0.0)

    def _push(self, addr: str) -> None:
        shape = self.capacity[addr]
        self._seq += 1
        version = self._seq
        self._version[addr] = version
        heap = self._heaps.setdefault(shape, [])
        heapq.heappush(heap, (*self._load(addr), version, addr))
        if len(heap) > 4 * len(self.capacity) + 64:  # drop stale entries now and then
            live = [e for e in heap if self._version.get(e[3]) == e[2]]
            heapq.heapify(live)
            self._heaps[shape] = live

    def add(self, addr: str, resources: Mapping[str, float]) -> None:
        """Track a GPU worker (a worker declaring ``GPU``); re-adding resets nothing."""
        gpus = float(resources.get(GPU, 0))
        if gpus <= 0:
            return
        self.capacity[addr] = (gpus, float(resources.get(GPU_MEMORY, 0)))
        self.used.setdefault(addr, [0.0, 0.0])
        self._push(addr)

    def remove(self, addr: str) -> None:
        self.capacity.pop(addr, None)
        self.used.pop(addr, None)
        self._version.pop(addr, None)

    def pick(self, needs: Mapping[str, float], room: float | None = None) -> str | None:
        """The least loaded GPU worker whose declared totals cover ``needs``, or ``None``.

        With ``room``, only a worker whose committed work plus ``needs`` stays within
        ``room`` times its GPUs (and GPU memory) qualifies.
        """
        g, m = float(needs.get(GPU, 0)), float(needs.get(GPU_MEMORY, 0))
        best: tuple[float, float, int, str] | None = None
        for (gpus, mem), heap in self._heaps.items():
            if gpus < g or (m and mem < m):
                continue
            while heap and self._version.get(heap[0][3]) != heap[0][2]:
                heapq.heappop(heap)
            if not heap or (best is not None and heap[0] >= best):
                continue
            if room is not None and not self.fits(heap[0][3], needs, room):
                continue  # the least loaded of this shape is full: so are the others
            best = heap[0]
        return None if best is None else best[3]

    def fits(self, addr: str, needs: Mapping[str, float], room: float) -> bool:
        """Whether ``addr`` can take ``needs`` within ``room`` times its capacity."""
        gpus, mem = self.capacity[addr]
        u_gpu, u_mem = self.used[addr]
        if u_gpu + float(needs.get(GPU, 0)) > gpus * room + 1e-9:
            return False
        m = float(needs.get(GPU_MEMORY, 0))
        return not (m and mem and u_mem + m > mem * room + 1e-9)

    def assign(self, addr: str, needs: Mapping[str, float]) -> None:
        """Charge ``addr`` with a task's GPU needs."""
        if addr in self.used:
            u = self.used[addr]
            u[0] += float(needs.get(GPU, 0))
            u[1] += float(needs.get(GPU_MEMORY, 0))
            self._push(addr)

    def release(self, addr: str, needs: Mapping[str, float]) -> None:
        """Undo :meth:`assign` when the task leaves the worker (done, erred, released)."""
        if addr in self.used:
            u = self.used[addr]
            u[0] = max(0.0, u[0] - float(needs.get(GPU, 0)))
            u[1] = max(0.0, u[1] - float(needs.get(GPU_MEMORY, 0)))
            self._push(addr)

    def ratio(self, addr: str) -> tuple[float, float]:
        """The load :meth:`pick` minimises: committed work per GPU slot, per GPU byte."""
        return self._load(addr)

    def load(self, addr: str) -> tuple[float, float]:
        """``(GPU units, GPU memory)`` committed to ``addr``."""
        u = self.used.get(addr, [0.0, 0.0])
        return u[0], u[1]


@lru_cache(maxsize=64)
def _ring(members: tuple[tuple[str, int], ...]) -> Rendezvous:
    return Rendezvous(Member(ident, weight=float(max(n, 1))) for ident, n in members)


class Placer:
    """The cluster as placement sees it, and the rules that turn requirements into decisions.

    Parameters
    ----------
    keep_cpu_off_gpu, affinity : bool
        Rules 4 and 2 of the module docstring (``swarmstore.compute.*`` in config).

    Examples
    --------
    >>> p = Placer()
    >>> p.add_worker(WorkerInfo("tcp://cpu:1", 2))
    >>> p.add_worker(WorkerInfo("tcp://gpu:1", 2, {"GPU": 1}))
    >>> p.decide(Requirements(gpu=1)).hold  # held until a GPU slot frees
    True
    >>> p.dispatch({"GPU": 1.0})
    'tcp://gpu:1'
    >>> p.decide(None, rootish=False).workers
    frozenset({'tcp://cpu:1'})
    """

    def __init__(
        self, *, keep_cpu_off_gpu: bool = True, affinity: bool = True, prefetch: float = 1.0
    ) -> None:
        self.keep_cpu_off_gpu = keep_cpu_off_gpu
        self.affinity = affinity
        self.prefetch = prefetch
        self.workers: dict[str, WorkerInfo] = {}
        self._by_key: dict[str, str] = {}  # ring identity -> address
        self.gpu = GpuBalancer()
        self._cpu_pool: frozenset[str] | None = None
        self._owners: dict[tuple[str, frozenset[tuple[str, float]] | None], str] = {}
        self._pools: dict[frozenset[tuple[str, float]] | None, tuple[tuple[str, int], ...]] = {}
        self._rings: dict[frozenset[tuple[str, float]] | None, Rendezvous] = {}

    def __repr__(self) -> str:
        return f"Placer(workers={len(self.workers)}, gpu_workers={len(self.gpu)})"

    # ---- cluster membership
    def add_worker(self, info: WorkerInfo) -> None:
        old = self.workers.get(info.address)
        self.workers[info.address] = info
        self._by_key[info.key] = info.address
        if old is not None and old.resources != info.resources:
            self.gpu.remove(info.address)
        self.gpu.add(info.address, info.resources)
        self._changed()

    def remove_worker(self, address: str) -> None:
        info = self.workers.pop(address, None)
        if info is not None:
            if self._by_key.get(info.key) == address:
                del self._by_key[info.key]
            self.gpu.remove(address)
            self._changed(leaving=address)

    def _changed(self, leaving: str | None = None) -> None:
        self._cpu_pool = None
        self._pools.clear()
        self._rings.clear()
        if leaving is None:
            self._owners.clear()
        else:  # rendezvous: only the chunks the leaver owned change owner
            self._owners = {k: a for k, a in self._owners.items() if a != leaving}

    @property
    def cpu_pool(self) -> frozenset[str]:
        """Workers without GPUs."""
        if self._cpu_pool is None:
            self._cpu_pool = frozenset(a for a, w in self.workers.items() if not w.is_gpu)
        return self._cpu_pool

    def dispatch(self, needs: Mapping[str, float]) -> str | None:
        """The GPU worker that should run a held GPU task now, charged with it; or ``None``.

        A worker qualifies while its committed GPU work stays within ``1 + prefetch`` times
        its GPUs and GPU memory: enough to keep every GPU busy plus a ready task behind it,
        never so much that its spare threads look busy to the scheduler's root-task queue.
        """
        room = 1.0 + self.prefetch
        addr = self.gpu.pick(needs, room)
        if addr is not None and not self.workers[addr].can_run(needs):
            # needs beyond GPU/GPU_MEMORY (say CPU): the rare slow path, a scan
            fits = [
                a
                for a, _ in self.capable(needs)
                if a in self.gpu.capacity and self.gpu.fits(a, needs, room)
            ]
            addr = min(fits, key=self.gpu.ratio) if fits else None
        if addr is not None:
            self.gpu.assign(addr, needs)
        return addr

    @property
    def has_gpu_workers(self) -> bool:
        return len(self.gpu) > 0

    def capable(self, needs: Mapping[str, float] | None) -> tuple[tuple[str, int], ...]:
        """``(address, nthreads)`` of the workers whose declared totals cover ``needs``.

        Cached per distinct ``needs`` until membership changes, so a graph of many tasks
        with the same needs pays the scan over the workers once.
        """
        shape = frozenset(needs.items()) if needs else None
        pool = self._pools.get(shape)
        if pool is None:
            pool = tuple(
                sorted(
                    (w.address, w.nthreads)
                    for w in self.workers.values()
                    if not needs or w.can_run(needs)
                )
            )
            self._pools[shape] = pool
        return pool

    def owner(self, chunk: str, needs: Mapping[str, float] | None = None) -> str | None:
        """The rendezvous-hash owner of ``chunk`` among the workers that can run ``needs``."""
        cache_key = (chunk, frozenset(needs.items()) if needs else None)
        addr = self._owners.get(cache_key)
        if addr is None:
            members = self.capable(needs)
            if not members:
                return None
            shape = cache_key[1]
            ring = self._rings.get(shape)
            if ring is None:  # one ring per pool until membership changes: hashing a
                keyed = tuple(sorted((self.workers[a].key, n) for a, n in members))
                ring = self._rings[shape] = _ring(keyed)  # 1,000-tuple per call costs more
            addr = self._by_key[ring.owner(chunk).name]
            if len(self._owners) > 1_000_000:
                self._owners.clear()
            self._owners[cache_key] = addr
        return addr

    # ---- decisions
    def decide(
        self,
        req: Requirements | None,
        *,
        rootish: bool = True,
        feeds_gpu: bool = False,
        base_priority: float = 0,
    ) -> Decision:
        """The decision for one task.

        ``rootish``: the scheduler would queue the task (restricting it would stop that);
        ``feeds_gpu``: a GPU task depends on it; ``base_priority``: the user priority the graph
        gave it (the ``priority=`` annotation or ``compute(priority=)``).
        """
        needs = req.resources() if req is not None else {}
        is_gpu = req is not None and req.is_gpu
        priority: float | None = None
        if req is not None and req.priority is not None:
            priority = float(req.priority)
        if is_gpu or feeds_gpu:
            priority = (base_priority if priority is None else priority) + FEEDER_BOOST
        resources = needs or None

        if needs and not self.capable(needs):
            return Decision(resources=resources, priority=priority, unsatisfiable=True)
        if req is not None and req.chunk is not None and self.affinity and self.workers:
            owner = self.owner(req.chunk, needs)
            # Strict: a loose pin lets work stealing move a slow read (S3 reads take longer
            # than stealing's 5 ms floor) off the worker whose cache holds the chunk. A pin
            # whose owner leaves is re-pinned to the new owner (SwarmPlugin.remove_worker).
            return Decision(
                workers=frozenset([owner]) if owner else None,
                loose=False,
                resources=resources,
                priority=priority,
            )
        if is_gpu:  # held: dispatched as GPU slots free up (see dispatch)
            return Decision(
                workers=frozenset([HOLD]), resources=resources, priority=priority, hold=True
            )
        if (
            self.keep_cpu_off_gpu
            and not rootish
            and not needs  # loose restrictions would let Dask ignore resource restrictions
            and self.has_gpu_workers
            and self.cpu_pool
        ):
            return Decision(workers=self.cpu_pool, loose=True, priority=priority)
        return Decision(resources=resources, priority=priority)


def gpu_ancestors(
    gpu_keys: Iterable[Hashable],
    deps_of: Callable[[Hashable], Iterable[Hashable] | None],
    limit: int = 100_000,
) -> set[Hashable]:
    """Keys that (transitively) feed the GPU tasks ``gpu_keys``.

    ``deps_of(key)`` gives the keys ``key`` depends on, or ``None`` for a key outside the new
    part of the graph (the walk stops there). ``limit`` bounds the walk on huge graphs.

    >>> deps = {"g": ["b"], "b": ["a"], "a": [], "x": []}
    >>> sorted(gpu_ancestors(["g"], deps.get))
    ['a', 'b']
    """
    seen: set[Hashable] = set()
    stack = [d for k in gpu_keys for d in (deps_of(k) or ())]
    while stack and len(seen) < limit:
        k = stack.pop()
        if k in seen:
            continue
        deps = deps_of(k)
        if deps is None:
            continue
        seen.add(k)
        stack.extend(deps)
    return seen - set(gpu_keys)
