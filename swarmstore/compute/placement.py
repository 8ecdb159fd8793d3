"""Placement decisions at graph time: plain objects, tested without a cluster.

:class:`Placer` holds the workers as declared (threads, resources, a stable name) and answers
one question per new task: which restrictions should it get, and does SwarmPlugin hold it
for :class:`~swarmstore.compute.dispatch.Dispatcher`? The plugin applies the answers in
``update_graph`` (the only hook before a task's first transition), through
:mod:`swarmstore.compute._apply`.

Rules, in order:

1. **Unsatisfiable**: resources no worker can give (declared totals, and for GPU memory the
   memory of one GPU: a 40 GiB task does not fit four 16 GiB GPUs). A GPU task is held all
   the same (a GPU worker may join); it fails after ``swarmstore.compute.unsatisfiable-timeout``.
   Any other resource is left to Dask, which waits for a worker as stock does.
2. **Chunk affinity**: a chunk task (``swarm={"chunk": key}``) is pinned, strictly, to the
   rendezvous-hash owner of its chunk among the workers that can run it. The ring knows
   workers by name, not address: a worker restarted on a new port keeps its chunks.
3. **GPU tasks are held** (restricted to :data:`HOLD`: once ready they park in ``no-worker``)
   and dispatched by slots and memory actually free (Dask checks only declared totals,
   dask/distributed#6467, #9108).
4. **CPU tasks are held too on a cluster with GPU workers**, root-ish ones included: the
   dispatcher is then the queue for every task (restrictions disable Dask's own queue,
   #9164), so GPU workers' threads stay free for GPU work, producers feeding GPUs are
   throttled, and an urgent task takes the next free thread anywhere.
5. Anything else (CPU-only clusters, tasks the user restricted) keeps stock placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from swarmstore.compute.requirements import GPU, GPU_MEMORY, Requirements
from swarmstore.hashing import Member, Rendezvous

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping

__all__ = ["HOLD", "Decision", "Placer", "WorkerInfo", "gpu_consumers"]

#: The worker restriction of a held task: no worker has this address, so the scheduler
#: parks the task in ``no-worker`` once it is ready, until SwarmPlugin dispatches it
HOLD = "swarmstore-held"


@dataclass(frozen=True)
class WorkerInfo:
    """What placement knows of a worker: address, threads, declared resources, name."""

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
    def gpu_memory(self) -> float:
        """Declared GPU memory, all GPUs together."""
        return float(self.resources.get(GPU_MEMORY, 0))

    @property
    def memory_per_gpu(self) -> float:
        """Memory of one GPU (GPUs of one worker are taken as alike)."""
        return self.gpu_memory / self.gpus if self.gpus else 0.0

    @property
    def is_gpu(self) -> bool:
        """Declares at least one GPU."""
        return self.gpus > 0

    def can_run(self, needs: Mapping[str, float]) -> bool:
        """Whether the declared totals cover ``needs``, GPU memory counted per GPU used."""
        if not all(self.resources.get(r, 0) >= n for r, n in needs.items()):
            return False
        mem = float(needs.get(GPU_MEMORY, 0))
        if mem and self.memory_per_gpu:
            return mem <= max(1.0, float(needs.get(GPU, 1))) * self.memory_per_gpu + 1e-6
        return True


@dataclass(frozen=True)
class Decision:
    """What to set on one task. ``None`` fields leave the task as the graph made it."""

    #: Worker restrictions (addresses)
    workers: frozenset[str] | None = None
    #: Resource restrictions
    resources: Mapping[str, float] | None = None
    #: Dask user priority to apply (larger runs first)
    priority: float | None = None
    #: No worker can run it now: it waits (GPU tasks: then fail, see the plugin)
    unsatisfiable: bool = False
    #: Held (restricted to :data:`HOLD`) until the dispatcher names a worker
    hold: bool = False
    #: Chunk affinity pin (one worker)
    pinned: bool = False


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
    >>> p.decide(Requirements(gpu=1)).hold, p.decide(None).hold
    (True, True)
    >>> p.decide(Requirements(chunk="x/c/0")).workers == {p.owner("x/c/0")}  # one owner
    True
    """

    def __init__(self, *, keep_cpu_off_gpu: bool = True, affinity: bool = True) -> None:
        self.keep_cpu_off_gpu = keep_cpu_off_gpu
        self.affinity = affinity
        self.workers: dict[str, WorkerInfo] = {}
        self._by_key: dict[str, str] = {}  # ring identity -> address
        self._gpu_workers = 0
        self._owners: dict[tuple[str, frozenset[tuple[str, float]] | None], str] = {}
        self._pools: dict[frozenset[tuple[str, float]] | None, tuple[tuple[str, int], ...]] = {}
        self._rings: dict[frozenset[tuple[str, float]] | None, Rendezvous] = {}

    def __repr__(self) -> str:
        return f"Placer(workers={len(self.workers)}, gpu_workers={self._gpu_workers})"

    # ---- cluster membership
    def add_worker(self, info: WorkerInfo) -> None:
        """Add or update a worker (its resources may change at run time)."""
        self._drop(info.address)
        self.workers[info.address] = info
        self._by_key[info.key] = info.address
        self._gpu_workers += info.is_gpu
        self._changed()

    def remove_worker(self, address: str) -> None:
        if self._drop(address):
            self._changed(leaving=address)

    def _drop(self, address: str) -> bool:
        info = self.workers.pop(address, None)
        if info is None:
            return False
        if self._by_key.get(info.key) == address:
            del self._by_key[info.key]
        self._gpu_workers -= info.is_gpu
        return True

    def _changed(self, leaving: str | None = None) -> None:
        self._pools.clear()
        self._rings.clear()
        if leaving is None:
            self._owners.clear()
        else:  # rendezvous: only the chunks the leaver owned change owner
            self._owners = {k: a for k, a in self._owners.items() if a != leaving}

    def sync(self, live: Mapping[str, Any], info_of: Callable[[Any], WorkerInfo]) -> bool:
        """Match the workers to ``live`` (address -> worker, turned into :class:`WorkerInfo`
        by ``info_of``); returns whether any joined, left or changed resources or threads."""
        changed = False
        for addr, ws in live.items():
            info = self.workers.get(addr)
            if info is None or info.resources != ws.resources or info.nthreads != ws.nthreads:
                self.add_worker(info_of(ws))
                changed = True
        if len(self.workers) != len(live):
            for addr in [a for a in self.workers if a not in live]:
                self.remove_worker(addr)
                changed = True
        return changed

    @property
    def has_gpu_workers(self) -> bool:
        return self._gpu_workers > 0

    def capable(self, needs: Mapping[str, float] | None) -> tuple[tuple[str, int], ...]:
        """``(address, nthreads)`` of the workers that can run ``needs`` (sorted).

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
            ring = self._rings.get(cache_key[1])
            if ring is None:  # one ring per pool until membership changes
                keyed = tuple(sorted((self.workers[a].key, n) for a, n in members))
                ring = self._rings[cache_key[1]] = _ring(keyed)
            addr = self._by_key[ring.owner(chunk).name]
            if len(self._owners) > 1_000_000:
                self._owners.clear()
            self._owners[cache_key] = addr
        return addr

    def shortfall(self, needs: Mapping[str, float]) -> str:
        """Why no worker can run ``needs``, in words (for the unsatisfiable error)."""
        gpus = [w for w in self.workers.values() if w.is_gpu]
        want = float(needs.get(GPU, 0))
        if want and not gpus:
            return "no worker declares a GPU"
        if want > max((w.gpus for w in gpus), default=0):
            most = max(w.gpus for w in gpus)
            return f"it needs {want:g} GPUs on one worker; the most any worker has is {most:g}"
        mem = float(needs.get(GPU_MEMORY, 0))
        if mem:
            best = max((w.memory_per_gpu for w in gpus), default=0.0)
            return f"it needs {mem / 2**30:.3g} GiB per GPU; the largest GPU has {best / 2**30:.3g}"
        return "no worker declares those resources"

    # ---- decisions
    def decide(self, req: Requirements | None, *, base_priority: float = 0) -> Decision:
        """The decision for one new task (``base_priority``: the graph's user priority)."""
        needs = req.resources() if req is not None else {}
        is_gpu = req is not None and req.is_gpu
        priority = None if req is None or req.priority is None else float(req.priority)
        resources = needs or None
        if needs and not self.capable(needs):
            return Decision(resources=resources, priority=priority, unsatisfiable=True, hold=is_gpu)
        if req is not None and req.chunk is not None and self.affinity and self.workers:
            owner = self.owner(req.chunk, needs)
            return Decision(
                workers=frozenset([owner]) if owner else None,
                resources=resources,
                priority=priority,
                pinned=owner is not None,
            )
        if is_gpu:
            return Decision(resources=resources, priority=priority, hold=True)
        if not needs and self.keep_cpu_off_gpu and self.has_gpu_workers:
            return Decision(priority=priority, hold=True)
        return Decision(resources=resources, priority=priority)


def gpu_consumers(
    gpu_keys: Iterable[Hashable],
    deps_of: Callable[[Hashable], Iterable[Hashable] | None],
    limit: int = 100_000,
) -> dict[Hashable, Hashable]:
    """For each task feeding GPU work, the first GPU task (in ``gpu_keys`` order) it feeds.

    ``deps_of(key)`` gives the keys ``key`` depends on, or ``None`` for a key outside the new,
    not yet started part of the graph (the walk stops there). GPU tasks are never feeders.
    ``limit`` bounds the walk on huge graphs.

    >>> deps = {"g": ["b"], "b": ["a"], "a": [], "g2": ["a", "c"], "c": []}
    >>> sorted(gpu_consumers(["g", "g2"], deps.get).items())
    [('a', 'g'), ('b', 'g'), ('c', 'g2')]
    """
    gpu = set(gpu_keys)
    out: dict[Hashable, Hashable] = {}
    for g in gpu_keys:
        stack = list(deps_of(g) or ())
        while stack and len(out) < limit:
            k = stack.pop()
            if k in out or k in gpu:
                continue
            deps = deps_of(k)
            if deps is None:
                continue
            out[k] = g
            stack.extend(deps)
    return out
