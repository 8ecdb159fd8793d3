"""Worker preload: ``dask worker --preload plugins/worker.py``.

Installs, before the worker registers with the scheduler (so its resources are part of the
registration):

- :class:`swarmstore.compute.InventoryPlugin`: detects GPUs (NVML), CPUs and memory and
  declares ``GPU``, ``GPU_MEMORY`` and ``CPU`` resources;
- :class:`swarmstore.cache.TieredCachePlugin`: the worker's shared RAM/disk chunk cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore.cache import TieredCachePlugin
from swarmstore.compute import InventoryPlugin

if TYPE_CHECKING:
    from distributed import Worker


async def dask_setup(worker: Worker) -> None:
    for plugin in (InventoryPlugin(), TieredCachePlugin()):
        await worker.plugin_add(plugin, catch_errors=False)
