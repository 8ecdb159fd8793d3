"""The scheduler's half of cache coherence: relay invalidations to every worker, in order.

See ``_coherence`` for the whole path and why it is ordered.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin

from swarmstore.cache._coherence import OP, SUBSCRIBE

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["CacheCoherence"]


class CacheCoherence(SchedulerPlugin):
    """Relay each worker's cache invalidations to every subscribed worker, in stream order.

    Installed by the workers' TieredCachePlugin (idempotent: once per scheduler). Only
    workers that subscribed get the messages: an unknown op would close a worker's stream.
    """

    name = "swarmstore-cache-coherence"
    idempotent = True

    def __init__(self) -> None:
        self.subscribers: set[str] = set()
        self.relayed = 0
        self.scheduler: Scheduler | None = None

    def start(self, scheduler: Scheduler) -> None:  # sync: registering it is atomic
        self.scheduler = scheduler
        scheduler.stream_handlers[OP] = self.relay
        scheduler.handlers[SUBSCRIBE] = self.subscribe

    def subscribe(self, worker: str) -> None:
        self.subscribers.add(worker)

    def relay(self, worker: str | None = None, **msg: Any) -> None:
        """Put the invalidation on every subscriber's stream, now (before what follows it)."""
        scheduler = self.scheduler
        assert scheduler is not None
        msg["op"] = OP
        msg["origin"] = worker
        for address in list(self.subscribers):
            stream = scheduler.stream_comms.get(address)
            if stream is None:
                self.subscribers.discard(address)
                continue
            with contextlib.suppress(Exception):
                stream.send(dict(msg))
        self.relayed += 1

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.subscribers.discard(worker)
