"""swarmstore figures on Dask's Prometheus endpoints (``/metrics`` of scheduler and workers).

Dask serves ``prometheus_client``'s default registry at ``/metrics`` on the HTTP server of
the scheduler and of every worker. :class:`SwarmCollector`, registered there once per
process, adds ``swarmstore_*`` families computed at scrape time from live objects:

- on the scheduler, from :class:`~swarmstore.compute.SwarmPlugin`: placements (held GPU
  tasks dispatched per worker, chunk-affinity pins per worker, CPU tasks kept off GPU
  workers, unsatisfiable tasks), GPU slots in use, replication of critical keys (tracked,
  under-replicated now, replicas requested, keys lost) and events logged per action;
- per worker, from :class:`~swarmstore.cache.TieredCachePlugin`: cache hits, misses,
  evictions, bytes and entries per tier and backing-store reads. Workers send these figures
  to the scheduler with their heartbeats (``Worker.metrics["swarmstore"]``), so the
  scheduler's endpoint shows every worker's cache, whatever process it runs in;
- per process, from the process's :func:`~swarmstore.network.default_router` (the router
  every store unpickled in a Dask task uses): latency quantiles (p50, p95, p99), requests,
  failures, hedges and circuit state per source, requests in flight and queued per QoS
  class. They are labelled ``process="<host>:<pid>"`` (one router per process, however
  many workers it hosts); ``swarmstore_worker_process`` maps workers to processes.

The figures are plain dicts and :class:`Sample` lists (:func:`cache_figures`,
:func:`router_figures`, :func:`scheduler_samples`, :func:`worker_samples`), tested without
Prometheus; only :class:`SwarmCollector` turns them into metric families. Without
``prometheus_client`` (Dask treats it as optional, and so do we) nothing is registered and
nothing fails; heartbeats still carry the figures.

``docs/metrics.md`` lists every family, its labels and meaning.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

from distributed.diagnostics.plugin import SchedulerPlugin

from swarmstore import _events, config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from distributed import Worker

    from swarmstore.cache._plugin import TieredCachePlugin
    from swarmstore.compute.placement import Decision
    from swarmstore.compute.plugin import SwarmPlugin
    from swarmstore.network import TransferRouter

__all__ = [
    "HEARTBEAT_KEY",
    "PROCESS",
    "SPECS",
    "EventCounter",
    "PlacementCounts",
    "Sample",
    "SwarmCollector",
    "cache_figures",
    "collector",
    "is_registered",
    "router_figures",
    "router_samples",
    "scheduler_samples",
    "track_scheduler",
    "track_worker",
    "untrack_scheduler",
    "worker_figures",
    "worker_samples",
]

logger = logging.getLogger(__name__)

#: This process, as the ``process`` label shows it
PROCESS = f"{socket.gethostname()}:{os.getpid()}"
#: Key of the figures in ``Worker.metrics`` (and so in the scheduler's ``WorkerState.metrics``)
HEARTBEAT_KEY = "swarmstore"
PREFIX = "swarmstore_"
QUANTILES = (0.5, 0.95, 0.99)
CIRCUIT_STATES = ("closed", "open", "half-open")

#: Every family: name (without ``swarmstore_``) -> (type, help, label names)
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "placement_gpu_dispatched": (
        "counter",
        "Held GPU tasks dispatched to each GPU worker as slots freed up",
        ("worker",),
    ),
    "placement_affinity_pinned": (
        "counter",
        "Chunk tasks pinned to the worker owning their chunk",
        ("worker",),
    ),
    "placement_cpu_kept_off_gpu": (
        "counter",
        "CPU tasks restricted (loosely) to CPU workers while GPU workers exist",
        (),
    ),
    "placement_unsatisfiable": (
        "counter",
        "Tasks needing resources no worker declares: seen (waiting) and failed",
        ("outcome",),
    ),
    "placement_gpu_queued": ("gauge", "Ready GPU tasks held for a free GPU slot", ()),
    "placement_tracked_tasks": ("gauge", "Live tasks with swarm or GPU annotations", ()),
    "gpu_slots": ("gauge", "GPUs each GPU worker declares", ("worker",)),
    "gpu_committed": (
        "gauge",
        "GPUs' worth of dispatched GPU tasks not finished, per GPU worker",
        ("worker",),
    ),
    "replication_tracked_keys": ("gauge", "Critical keys kept at two or more copies", ()),
    "replication_under_replicated_keys": (
        "gauge",
        "Critical keys in memory with fewer copies than desired",
        (),
    ),
    "replication_missing_replicas": (
        "gauge",
        "Copies missing, over all under-replicated critical keys",
        (),
    ),
    "replication_requested": (
        "counter",
        "Replicas requested as soon as critical keys reached memory",
        (),
    ),
    "replication_keys_lost": (
        "counter",
        "Critical keys that lost every copy while still wanted (recomputed)",
        (),
    ),
    "events": ("counter", "swarmstore events logged on this scheduler", ("action",)),
    "cache_hits": ("counter", "Cache hits per worker and tier", ("worker", "tier")),
    "cache_misses": ("counter", "Cache misses per worker and tier", ("worker", "tier")),
    "cache_evictions": ("counter", "Entries evicted per worker and tier", ("worker", "tier")),
    "cache_bytes": ("gauge", "Bytes cached per worker and tier", ("worker", "tier")),
    "cache_capacity_bytes": ("gauge", "Byte bound per worker and tier", ("worker", "tier")),
    "cache_entries": ("gauge", "Entries cached per worker and tier", ("worker", "tier")),
    "cache_backing_reads": ("counter", "Reads that went to the backing store", ("worker",)),
    "cache_backing_read_bytes": ("counter", "Bytes read from the backing store", ("worker",)),
    "cache_backing_errors": ("counter", "Backing-store reads that failed", ("worker",)),
    "worker_process": (
        "gauge",
        "1 for each worker, labelled with the process hosting it",
        ("worker", "process"),
    ),
    "router_latency_seconds": (
        "gauge",
        "Request latency quantiles per source (recent requests)",
        ("process", "source", "quantile"),
    ),
    "router_requests": ("counter", "Requests finished per source", ("process", "source")),
    "router_failures": ("counter", "Requests failed per source", ("process", "source")),
    "router_hedges": ("counter", "Hedged requests started per source", ("process", "source")),
    "router_circuit": (
        "gauge",
        "Circuit state per source (1 for the current state)",
        ("process", "source", "state"),
    ),
    "router_in_flight": ("gauge", "Requests in flight per QoS class", ("process", "qos")),
    "router_queued": ("gauge", "Requests waiting for a slot per QoS class", ("process", "qos")),
}


class Sample(NamedTuple):
    """One value of family ``swarmstore_<name>`` with its labels."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _s(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, tuple(labels.items()), float(value))


# --------------------------------------------------------------------------- counting
class PlacementCounts:
    """What SwarmPlugin decided, counted (``plugin.placements``); read at scrape time.

    >>> from swarmstore.compute.placement import Decision
    >>> counts = PlacementCounts()
    >>> counts.decided(Decision(workers=frozenset({"w1"})), frozenset())
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

    def decided(self, d: Decision, cpu_pool: frozenset[str]) -> None:
        """Count a decision applied to a new task.

        ``cpu_pool`` is the placer's pool object: a CPU-only decision carries that very
        frozenset, while a chunk pin carries a set of its own (even when both name the
        same single worker). Held GPU tasks are counted when dispatched.
        """
        if d.unsatisfiable:
            self.unsatisfiable_waiting += 1
        elif d.hold or d.workers is None:
            return
        elif d.workers is cpu_pool:
            self.cpu_kept_off_gpu += 1
        elif len(d.workers) == 1:
            self.affinity_pinned[next(iter(d.workers))] += 1

    def dispatched(self, worker: str) -> None:
        """A held GPU task was sent to ``worker``."""
        self.gpu_dispatched[worker] += 1

    def failed(self, n: int) -> None:
        """``n`` unsatisfiable tasks were failed after the timeout."""
        self.unsatisfiable_failed += n


class EventCounter(SchedulerPlugin):
    """Count the swarmstore events a scheduler logs, per action (``swarmstore_events``)."""

    name = "swarmstore-events"
    idempotent = True

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == _events.TOPIC:
            action = msg.get("action") if isinstance(msg, dict) else None
            self.counts[str(action or "unknown")] += 1


# --------------------------------------------------------------------------- figures
def cache_figures(plugin: TieredCachePlugin) -> dict[str, Any]:
    """A worker's cache counters, per tier, and backing-store reads summed over its stores."""
    stats = plugin.stats()
    out: dict[str, Any] = {}
    for tier in ("memory", "disk"):
        t = stats.get(tier)
        if t:
            out[tier] = {
                k: int(t.get(k) or 0)
                for k in ("hits", "misses", "evictions", "bytes", "entries", "max_bytes")
            }
    backing = (stats.get("backing") or {}).values()
    out["backing"] = {
        k: sum(int(b.get(k) or 0) for b in backing) for k in ("reads", "bytes", "errors")
    }
    return out


def router_figures(router: TransferRouter) -> dict[str, Any]:
    """Per source: latency quantiles, requests, failures, hedges, circuit; lanes per class.

    Safe to call from any thread: sample windows are copied before they are sorted.
    """
    now = router.clock()
    sources: dict[str, Any] = {}
    for name, st in list(router.sources.items()):
        window = sorted(tuple(st.samples))
        n = len(window)
        circuit = router.circuits.get(name)
        sources[str(name)] = {
            "quantiles": {str(q): window[min(n - 1, int(q * n))] for q in QUANTILES} if n else {},
            "requests": st.requests,
            "failures": st.failures,
            "hedges": st.hedges,
            "circuit": circuit.state(now) if circuit is not None else "closed",
        }
    classes = {
        str(c): {"in_flight": f["in_flight"], "queued": f["queued"]}
        for c, f in router.lanes.figures().items()
    }
    return {"sources": sources, "classes": classes}


def worker_figures(plugin: TieredCachePlugin) -> dict[str, Any]:
    """What a worker sends with its heartbeats: its process, cache and router figures."""
    from swarmstore.network import default_router

    return {
        "process": PROCESS,
        "cache": cache_figures(plugin),
        "router": router_figures(default_router()),
    }


# --------------------------------------------------------------------------- samples
def scheduler_samples(plugin: SwarmPlugin) -> list[Sample]:
    """Placement, GPU, replication and event samples of a started SwarmPlugin."""
    out: list[Sample] = []
    counts = getattr(plugin, "placements", None)
    if counts is not None:
        for w, v in counts.gpu_dispatched.items():
            out.append(_s("placement_gpu_dispatched", v, worker=w))
        for w, v in counts.affinity_pinned.items():
            out.append(_s("placement_affinity_pinned", v, worker=w))
        out.append(_s("placement_cpu_kept_off_gpu", counts.cpu_kept_off_gpu))
        out.append(_s("placement_unsatisfiable", counts.unsatisfiable_waiting, outcome="waiting"))
        out.append(_s("placement_unsatisfiable", counts.unsatisfiable_failed, outcome="failed"))
    queued = {k for _, _, k in plugin._ready if k in plugin.held and k not in plugin.charged}
    out.append(_s("placement_gpu_queued", len(queued)))
    out.append(_s("placement_tracked_tasks", len(plugin.requirements)))
    gpu = plugin.placer.gpu
    for addr, (gpus, _mem) in list(gpu.capacity.items()):
        out.append(_s("gpu_slots", gpus, worker=addr))
        out.append(_s("gpu_committed", gpu.used.get(addr, (0.0,))[0], worker=addr))
    from swarmstore.compute.replication import ReplicationController

    for ext in plugin.extensions:
        if isinstance(ext, ReplicationController):
            f = ext.figures()
            out.append(_s("replication_tracked_keys", f["tracked"]))
            out.append(_s("replication_under_replicated_keys", f["under_replicated"]))
            out.append(_s("replication_missing_replicas", f["missing"]))
            out.append(_s("replication_requested", f["requested"]))
            out.append(_s("replication_keys_lost", f["lost"]))
    scheduler = plugin.scheduler
    counter = scheduler.plugins.get(EventCounter.name) if scheduler is not None else None
    if isinstance(counter, EventCounter):
        out += [_s("events", v, action=a) for a, v in counter.counts.items()]
    return out


def worker_samples(worker: str, figures: Mapping[str, Any]) -> list[Sample]:
    """Cache samples of one worker from its figures (:func:`worker_figures`)."""
    out = [_s("worker_process", 1, worker=worker, process=str(figures.get("process", "")))]
    cache = figures.get("cache") or {}
    for tier in ("memory", "disk"):
        t = cache.get(tier)
        if not t:
            continue
        for key, name in (
            ("hits", "cache_hits"),
            ("misses", "cache_misses"),
            ("evictions", "cache_evictions"),
            ("bytes", "cache_bytes"),
            ("max_bytes", "cache_capacity_bytes"),
            ("entries", "cache_entries"),
        ):
            out.append(_s(name, t.get(key, 0), worker=worker, tier=tier))
    b = cache.get("backing")
    if b:
        out.append(_s("cache_backing_reads", b.get("reads", 0), worker=worker))
        out.append(_s("cache_backing_read_bytes", b.get("bytes", 0), worker=worker))
        out.append(_s("cache_backing_errors", b.get("errors", 0), worker=worker))
    return out


def router_samples(process: str, figures: Mapping[str, Any]) -> list[Sample]:
    """Router samples of one process from :func:`router_figures`."""
    out: list[Sample] = []
    for src, f in (figures.get("sources") or {}).items():
        for q, v in (f.get("quantiles") or {}).items():
            out.append(_s("router_latency_seconds", v, process=process, source=src, quantile=q))
        out.append(_s("router_requests", f.get("requests", 0), process=process, source=src))
        out.append(_s("router_failures", f.get("failures", 0), process=process, source=src))
        out.append(_s("router_hedges", f.get("hedges", 0), process=process, source=src))
        state = f.get("circuit", "closed")
        for st in CIRCUIT_STATES:
            out.append(_s("router_circuit", st == state, process=process, source=src, state=st))
    for qos, f in (figures.get("classes") or {}).items():
        out.append(_s("router_in_flight", f.get("in_flight", 0), process=process, qos=qos))
        out.append(_s("router_queued", f.get("queued", 0), process=process, qos=qos))
    return out


# --------------------------------------------------------------------------- collector
def _running(server: Any) -> bool:
    status = getattr(getattr(server, "status", None), "name", None)
    return status in ("running", "paused")


class SwarmCollector:
    """A ``prometheus_client`` collector of the swarmstore figures of this process.

    It tracks SwarmPlugins (scheduler side) and TieredCachePlugins with their workers,
    weakly, and at each scrape yields samples of those still running: scheduler figures,
    per-worker cache figures (live for workers in this process, from heartbeats for the
    others) and router figures per process. A section that fails is skipped and logged
    once; a scrape never fails because of swarmstore.

    Notes
    -----
    :meth:`collect` runs in the thread serving ``/metrics`` (the event loop of the
    scheduler or worker). Its cost is linear in workers, router sources and critical keys.
    """

    def __init__(self) -> None:
        self.schedulers: weakref.WeakSet[SwarmPlugin] = weakref.WeakSet()
        self.workers: weakref.WeakKeyDictionary[TieredCachePlugin, weakref.ref[Worker]] = (
            weakref.WeakKeyDictionary()
        )
        self._failed: set[str] = set()

    def __repr__(self) -> str:
        return f"SwarmCollector(schedulers={len(self.schedulers)}, workers={len(self.workers)})"

    def _guard(self, section: str, fn: Callable[..., list[Sample]], *args: Any) -> list[Sample]:
        try:
            return fn(*args)
        except Exception:
            if section not in self._failed:
                self._failed.add(section)
                logger.exception("swarmstore metrics: %s figures failed (logged once)", section)
            return []

    def samples(self) -> list[Sample]:
        """Every sample of this process now, each (name, labels) once."""
        local: dict[str, TieredCachePlugin] = {}
        for cache_plugin, ref in list(self.workers.items()):
            worker = ref()
            if worker is not None and _running(worker):
                local[worker.address] = cache_plugin
        out: list[Sample] = []
        routers: dict[str, Any] = {}
        for plugin in list(self.schedulers):
            scheduler = plugin.scheduler
            if scheduler is None or not _running(scheduler):
                continue
            out += self._guard("scheduler", scheduler_samples, plugin)
            for addr, ws in list(scheduler.workers.items()):
                figures = ws.metrics.get(HEARTBEAT_KEY)
                if addr in local or not isinstance(figures, dict):
                    continue
                out += self._guard("heartbeat", worker_samples, addr, figures)
                process = figures.get("process")
                if process and process != PROCESS and isinstance(figures.get("router"), dict):
                    routers.setdefault(process, figures["router"])
        for addr, cache_plugin in local.items():
            out += self._guard("cache", _live_worker_samples, addr, cache_plugin)
        if local or out:
            out += self._guard("router", _live_router_samples)
        for process, figures in routers.items():
            out += self._guard("heartbeat", router_samples, process, figures)
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        unique = []
        for s in out:
            if (s.name, s.labels) not in seen:
                seen.add((s.name, s.labels))
                unique.append(s)
        return unique

    def describe(self) -> list[Any]:
        """Empty families with every name (the registry checks them for collisions)."""
        return list(_families([]).values())

    def collect(self) -> list[Any]:
        """The metric families of :meth:`samples` (``prometheus_client`` protocol)."""
        try:
            return list(_families(self.samples()).values())
        except Exception:
            if "collect" not in self._failed:
                self._failed.add("collect")
                logger.exception("swarmstore metrics failed (logged once)")
            return []


def _live_worker_samples(address: str, plugin: TieredCachePlugin) -> list[Sample]:
    return worker_samples(address, {"process": PROCESS, "cache": cache_figures(plugin)})


def _live_router_samples() -> list[Sample]:
    from swarmstore.network import default_router

    return router_samples(PROCESS, router_figures(default_router()))


def _families(samples: Iterable[Sample]) -> dict[str, Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    fams: dict[str, Any] = {}
    for name, (kind, doc, labels) in SPECS.items():
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        fams[name] = cls(PREFIX + name, doc, labels=list(labels))
    for s in samples:
        values = dict(s.labels)
        fams[s.name].add_metric([values[k] for k in SPECS[s.name][2]], s.value)
    return fams


# --------------------------------------------------------------------------- registration
_lock = threading.Lock()
_collector: SwarmCollector | None = None
_registered = False


def collector() -> SwarmCollector:
    """This process's collector, registered with ``prometheus_client`` when it is installed."""
    global _collector, _registered
    with _lock:
        if _collector is None:
            _collector = SwarmCollector()
        if not _registered:
            _registered = _register(_collector)
        return _collector


def is_registered() -> bool:
    """Whether this process's collector is in ``prometheus_client``'s default registry."""
    return _registered


def _register(c: SwarmCollector) -> bool:
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return False  # optional, as in Dask: /metrics says prometheus_client is missing
    try:
        REGISTRY.register(c)
    except ValueError as e:  # another collector already owns swarmstore_* names
        logger.warning("swarmstore metrics not registered: %s", e)
        return False
    return True


def track_scheduler(plugin: SwarmPlugin) -> None:
    """Report ``plugin``'s figures on this process's ``/metrics``; count its events."""
    try:
        collector().schedulers.add(plugin)
        if plugin.scheduler is not None:
            plugin.scheduler.add_plugin(EventCounter(), idempotent=True)
    except Exception:
        logger.exception("swarmstore metrics: scheduler figures not installed")


def untrack_scheduler(plugin: SwarmPlugin) -> None:
    """Stop reporting ``plugin`` (it closed)."""
    if _collector is not None:
        _collector.schedulers.discard(plugin)


def track_worker(worker: Worker, plugin: TieredCachePlugin) -> None:
    """Report ``worker``'s cache on this process's ``/metrics`` and in its heartbeats."""
    try:
        collector().workers[plugin] = weakref.ref(worker)
        worker.metrics[HEARTBEAT_KEY] = _Heartbeat(plugin)
    except Exception:
        logger.exception("swarmstore metrics: worker figures not installed")


class _Heartbeat:
    """``Worker.metrics`` entry: the worker's figures, recomputed at most every
    ``swarmstore.metrics.interval`` (a disk tier's entry count is a query)."""

    def __init__(self, plugin: TieredCachePlugin) -> None:
        self.plugin = plugin
        self.interval = config.get_seconds("metrics.interval") or 0.0
        self._last: dict[str, Any] | None = None
        self._at = 0.0
        self._failed = False

    def __call__(self, worker: Worker) -> dict[str, Any] | None:
        now = time.monotonic()
        if self._last is None or now - self._at >= self.interval:
            try:
                self._last = worker_figures(self.plugin)
            except Exception:
                if not self._failed:
                    self._failed = True
                    logger.exception("swarmstore metrics: worker figures failed (logged once)")
                return self._last
            self._at = now
        return self._last
