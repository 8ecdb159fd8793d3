"""Worker preload: ``dask worker --preload plugins/worker.py``.

Installs, before the worker registers with the scheduler (so its resources are part of the
registration):

- :class:`swarmstore.compute.InventoryPlugin`: detects GPUs (NVML), CPUs and memory and
  declares ``GPU``, ``GPU_MEMORY`` and ``CPU`` resources;
- :class:`swarmstore.cache.TieredCachePlugin`: the worker's shared RAM/disk chunk cache.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from swarmstore.compute import InventoryPlugin

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger("swarmstore.plugins.worker")

try:  # the tiered cache lands in swarmstore.cache during this work; guard until it does
    from swarmstore.cache import TieredCachePlugin
except ImportError as e:  # pragma: no cover - removed once swarmstore.cache ships it
    logger.warning("swarmstore.cache.TieredCachePlugin not available: %s", e)
    TieredCachePlugin = None


async def dask_setup(worker: Worker) -> None:
    plugins = [InventoryPlugin()]
    if TieredCachePlugin is not None:
        plugins.append(TieredCachePlugin())
    for plugin in plugins:
        await worker.plugin_add(plugin, catch_errors=False)
