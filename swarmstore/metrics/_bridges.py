"""Figures of capabilities that do not register a source of their own yet.

- The chunk cache: :func:`track_worker` (called by ``TieredCachePlugin.setup``) registers the
  worker's cache as a heartbeat source, from ``plugin.stats()``.
- The process's transfer router: the ``router`` source reads ``swarmstore.network`` only if
  this process has loaded it (nothing is imported here); a source the network registers
  under the same name replaces it.

Both go once their owners call :func:`~swarmstore.metrics.register_source` themselves.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from swarmstore.metrics._core import PROCESS, Family, attach_worker, declare, register_source

__all__ = [
    "CACHE_FAMILIES",
    "ROUTER_FAMILIES",
    "cache_figures",
    "router_figures",
    "track_worker",
    "worker_figures",
]

QUANTILES = (0.5, 0.95, 0.99)
CIRCUIT_STATES = ("closed", "open", "half-open")
_WT = ("worker", "tier")
_PS = ("process", "source")

CACHE_FAMILIES = (
    Family("cache_hits", "counter", "Cache hits per worker and tier", _WT),
    Family("cache_misses", "counter", "Cache misses per worker and tier", _WT),
    Family("cache_evictions", "counter", "Entries evicted per worker and tier", _WT),
    Family("cache_bytes", "gauge", "Bytes cached per worker and tier", _WT),
    Family("cache_capacity_bytes", "gauge", "Byte bound per worker and tier", _WT),
    Family("cache_entries", "gauge", "Entries cached per worker and tier", _WT),
    Family("cache_backing_reads", "counter", "Reads that went to the backing store", ("worker",)),
    Family("cache_backing_read_bytes", "counter", "Bytes read from the backing store", ("worker",)),
    Family("cache_backing_errors", "counter", "Backing-store reads that failed", ("worker",)),
)
_CACHE_KEYS = {
    "hits": "cache_hits",
    "misses": "cache_misses",
    "evictions": "cache_evictions",
    "bytes": "cache_bytes",
    "max_bytes": "cache_capacity_bytes",
    "entries": "cache_entries",
}

ROUTER_FAMILIES = (
    Family(
        "router_latency_seconds",
        "gauge",
        "Request latency quantiles per source (recent requests)",
        (*_PS, "quantile"),
    ),
    Family("router_requests", "counter", "Requests finished per source", _PS),
    Family("router_failures", "counter", "Requests failed per source", _PS),
    Family("router_hedges", "counter", "Hedged requests started per source", _PS),
    Family(
        "router_circuit",
        "gauge",
        "Circuit state per source (1 for the current state)",
        (*_PS, "state"),
    ),
    Family("router_in_flight", "gauge", "Requests in flight per QoS class", ("process", "qos")),
    Family(
        "router_queued", "gauge", "Requests waiting for a slot per QoS class", ("process", "qos")
    ),
)


# --------------------------------------------------------------------------- cache
def cache_figures(plugin: Any) -> dict[str, Any]:
    """A worker's cache counters, per tier, and backing-store reads summed over its stores."""
    stats = plugin.stats()
    out: dict[str, Any] = {}
    for tier in ("memory", "disk"):
        t = stats.get(tier)
        if t:
            out[tier] = {k: int(t.get(k) or 0) for k in (*_CACHE_KEYS, "entries")}
    backing = (stats.get("backing") or {}).values()
    out["backing"] = {
        k: sum(int(b.get(k) or 0) for b in backing) for k in ("reads", "bytes", "errors")
    }
    return out


def _cache_source(worker: Any, plugin: Any) -> Any:
    wref, pref = weakref.ref(worker), weakref.ref(plugin)

    def figures() -> dict[str, Any] | None:
        w, p = wref(), pref()
        if w is None or p is None:
            return None
        f, out = cache_figures(p), {}
        for tier in ("memory", "disk"):
            for key, fam in _CACHE_KEYS.items():
                if tier in f:
                    out.setdefault(fam, {})[(w.address, tier)] = f[tier].get(key, 0)
        b = f["backing"]
        out["cache_backing_reads"] = {w.address: b["reads"]}
        out["cache_backing_read_bytes"] = {w.address: b["bytes"]}
        out["cache_backing_errors"] = {w.address: b["errors"]}
        return out

    return figures


def track_worker(worker: Any, plugin: Any) -> None:
    """Report ``worker``'s cache (``plugin.stats()``) on ``/metrics`` and in its heartbeats."""
    register_source(
        f"cache@{id(worker)}", _cache_source(worker, plugin), CACHE_FAMILIES, worker=worker
    )
    attach_worker(worker)


# --------------------------------------------------------------------------- router
def router_figures(router: Any) -> dict[str, Any]:
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


def _loaded_router() -> Any:
    network = sys.modules.get("swarmstore.network")
    return None if network is None else network.default_router()


def _router_source() -> dict[str, Any] | None:
    router = _loaded_router()
    if router is None:
        return None
    f, p = router_figures(router), PROCESS
    out: dict[str, dict[tuple[str, ...], float]] = {fam.name: {} for fam in ROUTER_FAMILIES}
    for src, s in f["sources"].items():
        for q, v in s["quantiles"].items():
            out["router_latency_seconds"][(p, src, q)] = v
        for k in ("requests", "failures", "hedges"):
            out[f"router_{k}"][(p, src)] = s[k]
        for st in CIRCUIT_STATES:
            out["router_circuit"][(p, src, st)] = float(st == s["circuit"])
    for qos, c in f["classes"].items():
        out["router_in_flight"][(p, qos)] = c["in_flight"]
        out["router_queued"][(p, qos)] = c["queued"]
    return out


def worker_figures(plugin: Any) -> dict[str, Any]:
    """What ``swarmstore status --scheduler`` shows per worker: process, cache, router."""
    router = _loaded_router()
    return {
        "process": PROCESS,
        "cache": cache_figures(plugin),
        "router": router_figures(router) if router is not None else {},
    }


declare(CACHE_FAMILIES)
register_source("router", _router_source, ROUTER_FAMILIES)
