"""What compute reports on ``/metrics``: placement counts and GPU load, replication figures.

Both are :mod:`swarmstore.metrics` sources registered by their owners (SwarmPlugin and the
replication controller) with the families declared here.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from swarmstore import metrics
from swarmstore.metrics import Family

if TYPE_CHECKING:
    from collections.abc import Mapping

    from swarmstore.compute.dispatch import Dispatcher
    from swarmstore.compute.placement import Decision, Placer

__all__ = ["PLACEMENT_FAMILIES", "REPLICATION_FAMILIES", "PlacementCounts", "placement_figures"]

_W = ("worker",)

PLACEMENT_FAMILIES = (
    Family(
        "placement_gpu_dispatched",
        "counter",
        "Held GPU tasks dispatched to each GPU worker as slots freed up",
        _W,
    ),
    Family(
        "placement_affinity_pinned",
        "counter",
        "Chunk tasks pinned to the worker owning their chunk",
        _W,
    ),
    Family(
        "placement_cpu_kept_off_gpu",
        "counter",
        "CPU tasks queued by SwarmPlugin (kept off the threads GPU workers keep for GPU work)",
        (),
    ),
    Family(
        "placement_unsatisfiable",
        "counter",
        "Tasks needing resources no worker declares: seen (waiting) and failed",
        ("outcome",),
    ),
    Family("placement_gpu_queued", "gauge", "Ready GPU tasks held for a free GPU slot", ()),
    Family("placement_tracked_tasks", "gauge", "Live tasks with swarm or GPU annotations", ()),
    Family("gpu_slots", "gauge", "GPUs each GPU worker declares", _W),
    Family(
        "gpu_committed",
        "gauge",
        "GPUs' worth of dispatched GPU tasks not finished, per GPU worker",
        _W,
    ),
)

REPLICATION_FAMILIES = (
    Family("replication_tracked_keys", "gauge", "Critical keys kept at two or more copies", ()),
    Family(
        "replication_under_replicated_keys",
        "gauge",
        "Critical keys in memory with fewer copies than desired",
        (),
    ),
    Family(
        "replication_missing_replicas",
        "gauge",
        "Copies missing, over all under-replicated critical keys",
        (),
    ),
    Family(
        "replication_requested",
        "counter",
        "Replicas requested as soon as critical keys reached memory",
        (),
    ),
    Family(
        "replication_keys_lost",
        "counter",
        "Critical keys that lost every copy while still wanted (recomputed)",
        (),
    ),
)

metrics.declare((*PLACEMENT_FAMILIES, *REPLICATION_FAMILIES))


class PlacementCounts:
    """What SwarmPlugin decided, counted (``plugin.placements``); read at scrape time.

    >>> from swarmstore.compute.placement import Decision
    >>> counts = PlacementCounts()
    >>> counts.decided(Decision(workers=frozenset({"w1"}), pinned=True))
    >>> counts.dispatched("gpu-1"); counts.affinity_pinned, counts.gpu_dispatched
    (Counter({'w1': 1}), Counter({'gpu-1': 1}))
    """

    def __init__(self) -> None:
        #: Held GPU tasks dispatched, per worker
        self.gpu_dispatched: Counter[str] = Counter()
        #: Chunk tasks pinned to their owner, per worker
        self.affinity_pinned: Counter[str] = Counter()
        self.cpu_kept_off_gpu = 0
        self.unsatisfiable_waiting = 0
        self.unsatisfiable_failed = 0

    def __repr__(self) -> str:
        return (
            f"PlacementCounts(gpu={sum(self.gpu_dispatched.values())}, "
            f"pinned={sum(self.affinity_pinned.values())}, cpu={self.cpu_kept_off_gpu}, "
            f"unsatisfiable={self.unsatisfiable_waiting}/{self.unsatisfiable_failed})"
        )

    def decided(self, d: Decision) -> None:
        """Count a decision applied to a new task (GPU tasks count when dispatched;
        unsatisfiable ones are counted by the watch that reports them)."""
        if d.pinned and d.workers:
            self.affinity_pinned[next(iter(d.workers))] += 1
        elif d.hold and not d.resources:
            self.cpu_kept_off_gpu += 1

    def dispatched(self, worker: str) -> None:
        """A held GPU task was sent to ``worker``."""
        self.gpu_dispatched[worker] += 1

    def failed(self, n: int) -> None:
        """``n`` unsatisfiable tasks were failed after the timeout."""
        self.unsatisfiable_failed += n

    def figures(self) -> dict[str, Any]:
        """The counted families, as a metrics source returns them."""
        return {
            "placement_gpu_dispatched": dict(self.gpu_dispatched),
            "placement_affinity_pinned": dict(self.affinity_pinned),
            "placement_cpu_kept_off_gpu": self.cpu_kept_off_gpu,
            "placement_unsatisfiable": {
                "waiting": self.unsatisfiable_waiting,
                "failed": self.unsatisfiable_failed,
            },
        }


def placement_figures(
    counts: PlacementCounts, placer: Placer, dispatcher: Dispatcher, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Placement counts, GPU tasks ready, GPU slots and committed work per GPU worker."""
    gpus = [w for w in placer.workers.values() if w.is_gpu]
    return {
        **counts.figures(),
        "placement_gpu_queued": dispatcher.ready_gpu(),
        **extra,
        "gpu_slots": {w.address: w.gpus for w in gpus},
        "gpu_committed": {w.address: dispatcher.committed_gpu(w.address)[0] for w in gpus},
    }


def replication_figures(
    desired: Mapping[Any, int], tasks: Mapping[Any, Any], *, requested: int, lost: int
) -> dict[str, int]:
    """Tracked keys, under-replicated keys (in memory with fewer copies than desired) and
    their missing copies, fast-path requests and keys lost, from the scheduler's tasks."""
    under = missing = 0
    for key, n in desired.items():
        ts = tasks.get(key)
        if ts is not None and ts.state == "memory" and len(ts.who_has or ()) < n:
            under += 1
            missing += n - len(ts.who_has or ())
    return {
        "tracked": len(desired),
        "under_replicated": under,
        "missing": missing,
        "requested": requested,
        "lost": lost,
    }


def replication_metric_figures(f: Mapping[str, int]) -> dict[str, Any]:
    """:func:`replication_figures` under their ``/metrics`` family names."""
    return {
        "replication_tracked_keys": f["tracked"],
        "replication_under_replicated_keys": f["under_replicated"],
        "replication_missing_replicas": f["missing"],
        "replication_requested": f["requested"],
        "replication_keys_lost": f["lost"],
    }
