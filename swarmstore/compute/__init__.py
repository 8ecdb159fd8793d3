"""Compute: GPU/CPU-aware placement, priorities, GPU load balance and chunk affinity for Dask.

- :class:`SwarmPlugin` (scheduler plugin): ``client.register_plugin(SwarmPlugin())`` or
  ``dask scheduler --preload plugins/scheduler.py``.
- :class:`InventoryPlugin` (worker plugin): detects GPUs (NVML), CPUs and memory and declares
  them as Dask resources ``GPU``, ``GPU_MEMORY``, ``CPU``.
- :func:`annotate`: ``dask.annotate(swarm={...})`` validated on the client.

See ``docs/compute.md``.

Imports: errors, config, hashing, _events, metrics, and the capabilities it places work
for (cache, storage, network); never checkpoint or testing.
"""

from swarmstore.compute.dispatch import Dispatcher, Job
from swarmstore.compute.inventory import GPUInfo, Inventory, InventoryPlugin, detect
from swarmstore.compute.placement import Decision, Placer, WorkerInfo
from swarmstore.compute.plugin import DEFAULT_EXTENSIONS, SwarmPlugin
from swarmstore.compute.requirements import Requirements, annotate, parse

__all__ = [
    "DEFAULT_EXTENSIONS",
    "Decision",
    "Dispatcher",
    "GPUInfo",
    "Inventory",
    "InventoryPlugin",
    "Job",
    "Placer",
    "Requirements",
    "SwarmPlugin",
    "WorkerInfo",
    "annotate",
    "detect",
    "parse",
]
