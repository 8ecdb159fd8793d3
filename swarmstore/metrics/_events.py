"""Count the swarmstore events a scheduler logs, per action (``swarmstore_events``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from swarmstore import _events
from swarmstore.metrics._core import Family, register_source

__all__ = ["EventCounter", "count_events"]


class EventCounter(SchedulerPlugin):
    """A scheduler plugin counting ``log_event`` messages of the swarmstore topic."""

    name = "swarmstore-events"
    idempotent = True
    FAMILIES = (
        Family("events", "counter", "swarmstore events logged on this scheduler", ("action",)),
    )

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == _events.TOPIC:
            action = msg.get("action") if isinstance(msg, dict) else None
            self.counts[str(action or "unknown")] += 1

    def figures(self) -> dict[str, Any]:
        """The ``events`` family: count per action."""
        return {"events": dict(self.counts)}


def count_events(scheduler: Any) -> EventCounter:
    """Install (once) an :class:`EventCounter` on ``scheduler`` and register its figures."""
    counter = scheduler.plugins.get(EventCounter.name)
    if not isinstance(counter, EventCounter):
        counter = EventCounter()
        scheduler.add_plugin(counter, idempotent=True)
    register_source(
        f"events@{id(scheduler)}", counter.figures, EventCounter.FAMILIES, owner=scheduler
    )
    return counter
