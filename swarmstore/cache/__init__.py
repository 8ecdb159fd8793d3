"""Tiered chunk cache: RAM, then local disk, then the backing store; shared per Dask worker.

- :class:`TieredStore`: a zarr v3 store wrapping any store with a RAM tier and a disk tier
- :class:`DiskTier`: the disk tier (byte-bounded, crash- and process-safe), shareable
- :class:`MemoryTier`: the RAM tier (byte-bounded LRU on ``zict.LRU``, with admission)
- :class:`TieredCachePlugin` and :func:`worker_cache`: one TieredStore per backing store
  per Dask worker, used by every task there (imported lazily: they need ``distributed``)

Imports: errors, config, hashing, _events, _clock, _sync, metrics (to register its figures)
and network; never compute, checkpoint or testing.
"""

from __future__ import annotations

import importlib
from typing import Any

from swarmstore.cache._disk import DiskTier
from swarmstore.cache._identity import store_identity, version_token
from swarmstore.cache._memory import MemoryTier
from swarmstore.cache._tiered import TieredStore

__all__ = [
    "DiskTier",
    "MemoryTier",
    "TieredCachePlugin",
    "TieredStore",
    "store_identity",
    "version_token",
    "worker_cache",
]

_LAZY = {"TieredCachePlugin", "worker_cache"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("swarmstore.cache._plugin"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'swarmstore.cache' has no attribute {name!r}")
