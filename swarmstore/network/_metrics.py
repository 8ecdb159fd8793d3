"""The router's figures on ``/metrics``: what the metrics bridge's ``router`` source lacks.

Registered as the ``network`` source when :mod:`swarmstore.network` is imported; it reads
the process's default router only once that exists (it never creates one). Families, each
labelled ``process`` and ``source``: hedges that answered first, ejections, deadline misses,
probes, and what served reads were expected to take there against what they took.
"""

from __future__ import annotations

from typing import Any

from swarmstore import metrics
from swarmstore.metrics import Family

__all__ = ["FAMILIES", "register"]

_PS = ("process", "source")
FAMILIES = (
    Family("router_hedge_wins", "counter", "Hedges that answered before the first attempt", _PS),
    Family("router_ejections", "counter", "Times a source was ejected (its circuit opened)", _PS),
    Family("router_deadline_misses", "counter", "Attempts cut at their deadline", _PS),
    Family("router_probes", "counter", "Probe requests sent to a source", _PS),
    Family(
        "router_expected_seconds", "gauge", "Moving average of served reads' expected time", _PS
    ),
    Family(
        "router_observed_seconds", "gauge", "Moving average of served reads' observed time", _PS
    ),
)
_COUNTS = {
    "router_hedge_wins": "hedge_wins",
    "router_ejections": "ejections",
    "router_deadline_misses": "deadline_misses",
    "router_probes": "probes",
}


def figures(router: Any) -> dict[str, dict[tuple[str, str], float]]:
    """The families above from ``router.figures()``."""
    p = metrics.PROCESS
    out: dict[str, dict[tuple[str, str], float]] = {f.name: {} for f in FAMILIES}
    for src, f in router.figures()["sources"].items():
        for fam, key in _COUNTS.items():
            out[fam][(p, src)] = float(f[key])
        for fam, key in (("router_expected_seconds", "expected_ms"),
                         ("router_observed_seconds", "observed_ms")):  # fmt: skip
            if f[key] is not None:
                out[fam][(p, src)] = f[key] / 1e3
    return out


def _source() -> dict[str, dict[tuple[str, str], float]] | None:
    from swarmstore.network._router import _DEFAULT

    router = _DEFAULT.get("router")
    return None if router is None else figures(router)


def register() -> None:
    metrics.register_source("network", _source, FAMILIES)
