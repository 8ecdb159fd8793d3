"""swarmstore figures on Dask's Prometheus endpoints (``/metrics`` of scheduler and workers).

A leaf: capabilities feed it, it imports none of them. Each capability registers a *source*:

    metrics.register_source(name, fn, families, owner=None, worker=None)

``fn()`` returns a dict of figures, one entry per family it declared: a number for a family
without labels, or ``{label values: number}`` (a tuple in the family's label order, or a
plain string for one label). ``families`` are :class:`Family` values (name without the
``swarmstore_`` prefix, ``"counter"`` or ``"gauge"``, help, label names). A source whose
``fn`` is a bound method is held weakly: it disappears with its object.

- ``owner`` groups sources (a scheduler's: :func:`owner_samples` reads them, the CLI too).
- ``worker`` (a ``distributed.Worker``) makes the source ride that worker's heartbeats
  (``Worker.metrics["swarmstore"]``, recomputed at most every ``swarmstore.metrics.interval``)
  so the scheduler's endpoint shows every worker, whatever process it runs in; register the
  worker once with :func:`attach_worker`.

:class:`SwarmCollector`, registered once per process in ``prometheus_client``'s default
registry (the one Dask serves), turns the samples of every live source, and of the
heartbeats of remote workers of every watched scheduler, into metric families at scrape
time. A source that fails is skipped and logged once; a scrape never fails because of
swarmstore. Without ``prometheus_client`` nothing is registered and nothing fails.

Bridges kept until the capabilities register themselves (see BOARD.md): the cache's figures
through :func:`track_worker` (``plugin.stats()``), and the process router's through the
``router`` source, which reads ``swarmstore.network`` only if this process has loaded it.
``docs/metrics.md`` lists every family, its labels and meaning.
"""

from __future__ import annotations

from typing import Any

from swarmstore.metrics._bridges import (
    cache_figures,
    router_figures,
    track_worker,
    worker_figures,
)
from swarmstore.metrics._core import (
    HEARTBEAT_KEY,
    PROCESS,
    Family,
    Sample,
    SwarmCollector,
    attach_worker,
    collector,
    declare,
    families,
    is_registered,
    owner_samples,
    register_source,
    samples,
    unregister_source,
    watch_scheduler,
)
from swarmstore.metrics._events import EventCounter, count_events

__all__ = [
    "HEARTBEAT_KEY",
    "PROCESS",
    "EventCounter",
    "Family",
    "Sample",
    "SwarmCollector",
    "attach_worker",
    "cache_figures",
    "collector",
    "count_events",
    "declare",
    "families",
    "is_registered",
    "owner_samples",
    "register_source",
    "router_figures",
    "samples",
    "scheduler_samples",
    "track_worker",
    "unregister_source",
    "watch_scheduler",
    "worker_figures",
]


def scheduler_samples(plugin: Any) -> list[Sample]:
    """Samples of the sources of ``plugin``'s scheduler (what the CLI shows)."""
    return owner_samples(plugin.scheduler)
