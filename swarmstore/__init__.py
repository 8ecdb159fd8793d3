"""swarmstore: resource management for Dask + Zarr workloads.

Four capabilities, each usable alone and all composing on one Dask cluster:

- storage: :class:`ReplicatedStore`, a Zarr v3 store over several nodes with replicas,
  xxh3 checksums, read repair, scrub/repair/rebalance
- cache: :class:`TieredStore`, RAM -> local disk -> backing store, shared per worker
- compute: :class:`SwarmPlugin`, GPU/CPU-aware placement, chunk affinity, replication
- network: :class:`TransferRouter` and QoS lanes for the I/O swarmstore owns
- checkpoint: :class:`CheckpointManager`, atomic, versioned, incremental checkpoints

Public names are imported lazily so ``import swarmstore`` stays cheap: at import it reads
only :mod:`swarmstore.errors`; ``swarmstore.config`` (dask's config, the packaged defaults)
and each capability load on first use.

Imports: what each room may import is said in its package docstring; the shared modules
(``errors``, ``config``, ``hashing``, ``_clock``, ``_sync``, ``_events``, ``metrics``) import no
capability. ``tests/test_imports.py`` checks the rules and that no import circle exists.
"""

from __future__ import annotations

import importlib
from typing import Any

from swarmstore.errors import *  # noqa: F403
from swarmstore.errors import __all__ as _errors_all

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ReplicatedStore": "swarmstore.storage",
    "TieredStore": "swarmstore.cache",
    "DiskTier": "swarmstore.cache",
    "TieredCachePlugin": "swarmstore.cache",
    "SwarmPlugin": "swarmstore.compute",
    "ReplicationPlugin": "swarmstore.compute.replication",
    "ResultStore": "swarmstore.compute.durable",
    "durable": "swarmstore.compute.durable",
    "SwarmAdaptive": "swarmstore.compute.adaptive",
    "Pool": "swarmstore.compute.adaptive",
    "TransferRouter": "swarmstore.network",
    "qos": "swarmstore.network",
    "CheckpointManager": "swarmstore.checkpoint",
    "open_array": "swarmstore.dataset",
    "open_group": "swarmstore.dataset",
}

__all__ = ["__version__", "config", *_errors_all, *_LAZY]  # noqa: F405 (config is lazy)


def __getattr__(name: str) -> Any:
    if name == "config":  # imports dask.config: not needed for ``swarmstore --help``
        return importlib.import_module("swarmstore.config")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
