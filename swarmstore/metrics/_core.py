"""The metrics core: sources, families, samples, heartbeats and the Prometheus collector."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from swarmstore import config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "HEARTBEAT_KEY",
    "PROCESS",
    "Family",
    "Sample",
    "SwarmCollector",
    "attach_worker",
    "collector",
    "declare",
    "families",
    "is_registered",
    "owner_samples",
    "register_source",
    "samples",
    "unregister_source",
    "watch_scheduler",
]

logger = logging.getLogger("swarmstore.metrics")

#: This process, as the ``process`` label shows it
PROCESS = f"{socket.gethostname()}:{os.getpid()}"
#: Key of the figures in ``Worker.metrics`` (and so in the scheduler's ``WorkerState.metrics``)
HEARTBEAT_KEY = "swarmstore"
PREFIX = "swarmstore_"


@dataclass(frozen=True)
class Family:
    """One metric family: ``swarmstore_<name>``, its type, help text and label names."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()


class Sample(NamedTuple):
    """One value of family ``swarmstore_<name>`` with its labels."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _weak(obj: Any) -> Callable[[], Any]:
    if obj is None:
        return lambda: None
    try:
        return weakref.ref(obj)
    except TypeError:  # not weakly referenceable: held as it is
        return lambda: obj


@dataclass
class _Source:
    fn: Callable[[], Mapping[str, Any] | None]
    families: tuple[Family, ...]
    owner: Callable[[], Any]  # weak references: a source never keeps its owner alive
    worker: Callable[[], Any]
    scoped: bool  # registered with an owner or a worker


_lock = threading.RLock()
_sources: dict[str, _Source] = {}
_families: dict[str, Family] = {
    "worker_process": Family(
        "worker_process",
        "gauge",
        "1 for each worker, labelled with the process hosting it",
        ("worker", "process"),
    ),
}
_failed: set[str] = set()
_schedulers: weakref.WeakSet[Any] = weakref.WeakSet()
_workers: weakref.WeakSet[Any] = weakref.WeakSet()


# --------------------------------------------------------------------------- registration
def register_source(
    name: str,
    fn: Callable[[], Mapping[str, Any] | None],
    families: Iterable[Family] = (),
    *,
    owner: Any = None,
    worker: Any = None,
) -> None:
    """Add (or replace) the source ``name``; see the module docstring for ``fn``'s figures.

    Raises ``ValueError`` if a family is declared again with a different type or labels.
    """
    fams = tuple(families)
    with _lock:
        declare(fams)
        ref: Any = fn
        if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
            wm = weakref.WeakMethod(fn)  # type: ignore[arg-type]
            ref = _WeakFn(wm, name)
        scoped = owner is not None or worker is not None
        _sources[name] = _Source(ref, fams, _weak(owner), _weak(worker), scoped)
        _failed.discard(name)
    collector()


class _WeakFn:
    """A bound method held weakly; calling it after its object died removes the source."""

    def __init__(self, ref: weakref.WeakMethod, name: str) -> None:
        self.ref, self.name = ref, name

    def __call__(self) -> Mapping[str, Any] | None:
        fn = self.ref()
        if fn is None:
            unregister_source(self.name)
            return None
        return fn()


def declare(fams: Iterable[Family]) -> None:
    """Declare families ahead of any source (so ``describe`` claims their names)."""
    with _lock:
        for f in fams:
            old = _families.get(f.name)
            if old is not None and (old.kind, old.labels) != (f.kind, f.labels):
                raise ValueError(f"metric family {f.name!r} declared twice differently")
            _families[f.name] = f


def unregister_source(name: str) -> None:
    """Remove the source ``name`` (its families stay declared)."""
    with _lock:
        _sources.pop(name, None)


def families() -> dict[str, Family]:
    """Every family declared in this process, by name."""
    with _lock:
        return dict(_families)


def watch_scheduler(scheduler: Any) -> None:
    """Show the heartbeat figures of ``scheduler``'s remote workers on this process's
    ``/metrics``."""
    with _lock:
        _schedulers.add(scheduler)
    collector()


def attach_worker(worker: Any) -> None:
    """Send the figures of ``worker``'s sources (and of the process ones) with its heartbeats."""
    with _lock:
        _workers.add(worker)
    if HEARTBEAT_KEY not in worker.metrics:
        worker.metrics[HEARTBEAT_KEY] = _Heartbeat()
    collector()


# --------------------------------------------------------------------------- samples
def _as_samples(src: _Source, figures: Mapping[str, Any]) -> list[Sample]:
    out = []
    for fam in src.families:
        value = figures.get(fam.name)
        if value is None:
            continue
        if not fam.labels:
            out.append(Sample(fam.name, (), float(value)))
            continue
        for labels, v in dict(value).items():
            vals = (labels,) if isinstance(labels, str) else tuple(labels)
            out.append(
                Sample(fam.name, tuple(zip(fam.labels, map(str, vals), strict=True)), float(v))
            )
    return out


def _source_samples(name: str, src: _Source) -> list[Sample]:
    try:
        figures = src.fn()
        return _as_samples(src, figures) if figures else []
    except Exception:
        if name not in _failed:
            _failed.add(name)
            logger.exception("swarmstore metrics: source %s failed (logged once)", name)
        return []


def samples(*, owner: Any = None, worker: Any = None, heartbeat: bool = False) -> list[Sample]:
    """Samples of the live sources of this process (of one ``owner``/``worker`` if given;
    with ``heartbeat``, the worker's plus the process-wide ones)."""
    with _lock:
        items = list(_sources.items())
    out: list[Sample] = []
    for name, src in items:
        if owner is not None and src.owner() is not owner:
            continue
        if worker is not None and src.worker() is not worker:
            if not (heartbeat and not src.scoped):
                continue
        if src.scoped and src.owner() is None and src.worker() is None:
            unregister_source(name)  # its owner is gone
            continue
        out += _source_samples(name, src)
    return out


def owner_samples(owner: Any) -> list[Sample]:
    """Samples of the sources registered with ``owner`` (a scheduler's figures)."""
    return samples(owner=owner)


def _running(server: Any) -> bool:
    status = getattr(getattr(server, "status", None), "name", None)
    return status in ("running", "paused")


class SwarmCollector:
    """A ``prometheus_client`` collector of the swarmstore figures of this process.

    Notes
    -----
    :meth:`collect` runs in the thread serving ``/metrics``. Its cost is linear in sources,
    workers and their samples.
    """

    def __repr__(self) -> str:
        return f"SwarmCollector(sources={len(_sources)}, schedulers={len(_schedulers)})"

    def samples(self) -> list[Sample]:
        """Every sample of this process now, each (name, labels) once."""
        out = samples()
        local = {w.address for w in list(_workers) if _running(w)}
        for w in list(_workers):
            if _running(w):
                out.append(Sample("worker_process", _lab(w.address), 1.0))
        for scheduler in list(_schedulers):
            if _running(scheduler):
                out += _heartbeat_samples(scheduler, local)
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        unique = []
        for s in out:
            if (s.name, s.labels) not in seen and s.name in _families:
                seen.add((s.name, s.labels))
                unique.append(s)
        return unique

    def describe(self) -> list[Any]:
        """Empty families with every name (the registry checks them for collisions)."""
        return list(_metric_families([], families()).values())

    def collect(self) -> list[Any]:
        """The metric families of :meth:`samples` (``prometheus_client`` protocol)."""
        try:
            return list(_metric_families(self.samples(), families()).values())
        except Exception:
            if "collect" not in _failed:
                _failed.add("collect")
                logger.exception("swarmstore metrics failed (logged once)")
            return []


def _lab(worker: str, process: str = PROCESS) -> tuple[tuple[str, str], ...]:
    return (("worker", worker), ("process", process))


def _heartbeat_samples(scheduler: Any, local: set[str]) -> list[Sample]:
    out: list[Sample] = []
    for addr, ws in list(scheduler.workers.items()):
        beat = ws.metrics.get(HEARTBEAT_KEY)
        if addr in local or not isinstance(beat, dict):
            continue
        try:
            for name, spec in (beat.get("families") or {}).items():
                _families.setdefault(name, Family(name, spec[0], spec[1], tuple(spec[2])))
            process = str(beat.get("process", ""))
            out.append(Sample("worker_process", _lab(addr, process), 1.0))
            for name, labels, value in beat.get("samples") or ():
                out.append(Sample(name, tuple(map(tuple, labels)), float(value)))
        except Exception:
            if "heartbeat" not in _failed:
                _failed.add("heartbeat")
                logger.exception("swarmstore metrics: a worker heartbeat is malformed")
    return out


def _metric_families(out: Iterable[Sample], fams: Mapping[str, Family]) -> dict[str, Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    result: dict[str, Any] = {}
    for name, f in fams.items():
        cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
        result[name] = cls(PREFIX + name, f.help, labels=list(f.labels))
    for s in out:
        if s.name not in result:
            continue  # a sample of an undeclared family (a heartbeat from a newer worker)
        values = dict(s.labels)
        result[s.name].add_metric([values.get(k, "") for k in fams[s.name].labels], s.value)
    return result


class _Heartbeat:
    """``Worker.metrics`` entry: the worker's samples, recomputed at most every
    ``swarmstore.metrics.interval`` (a disk tier's entry count is a query)."""

    def __init__(self) -> None:
        self.interval: float = config.value("metrics.interval")
        self._last: dict[str, Any] | None = None
        self._at = 0.0

    def __call__(self, worker: Any) -> dict[str, Any] | None:
        now = time.monotonic()
        if self._last is None or now - self._at >= self.interval:
            got = samples(worker=worker, heartbeat=True)
            names = {s.name for s in got}
            fams = {n: [f.kind, f.help, list(f.labels)] for n, f in families().items()}
            self._last = {
                "process": PROCESS,
                "families": {n: fams[n] for n in names if n in fams},
                "samples": [[s.name, [list(p) for p in s.labels], s.value] for s in got],
            }
            self._at = now
        return self._last


# --------------------------------------------------------------------------- prometheus
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
