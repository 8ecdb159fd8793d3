"""Scheduler preload: ``dask scheduler --preload plugins/scheduler.py``.

Installs :class:`swarmstore.compute.SwarmPlugin` (placement, GPU balance, chunk affinity and
the extensions it hosts, such as replication of critical results) before the scheduler starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore.compute import SwarmPlugin

if TYPE_CHECKING:
    from distributed import Scheduler


def dask_setup(scheduler: Scheduler) -> None:
    scheduler.add_plugin(SwarmPlugin(), idempotent=True)
