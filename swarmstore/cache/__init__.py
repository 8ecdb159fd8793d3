"""Tiered chunk cache: RAM, then local disk, then the backing store; shared and coherent
on a Dask cluster.

- :class:`TieredStore`: a zarr v3 store wrapping any store with a chain of tiers
- :class:`MemoryTier`: the RAM tier (byte-bounded, scan-resistant S3-FIFO, with admission)
- :class:`DiskTier`: the disk tier (byte-bounded, crash- and process-safe), shareable
- :class:`Tier`: the protocol every tier follows (a GPU or peer tier plugs in through it)
- :class:`TieredCachePlugin` and :func:`worker_cache`: one TieredStore per backing store
  per Dask worker, used by every task there, invalidated across the cluster on writes
  (imported lazily: they need ``distributed``)
- :class:`PeerTier` and :class:`PeerDirectory`: a local miss served from another
  worker's cache over Dask's comms, chosen by the transfer router (lazily, too)

Imports: errors, config, hashing, _events, _clock, _sync, metrics (to register its figures)
and network; never compute, checkpoint or testing.
"""

from __future__ import annotations

import importlib
from typing import Any

from swarmstore.cache._disk import DiskTier
from swarmstore.cache._identity import store_identity, version_token
from swarmstore.cache._memory import MemoryTier
from swarmstore.cache._tier import Entry, SyncTier, Tier
from swarmstore.cache._tiered import TieredStore

__all__ = [
    "CacheCoherence",
    "DiskTier",
    "Entry",
    "MemoryTier",
    "PeerDirectory",
    "PeerTier",
    "SyncTier",
    "Tier",
    "TieredCachePlugin",
    "TieredStore",
    "store_identity",
    "version_token",
    "worker_cache",
]

_LAZY = {
    "TieredCachePlugin": "_plugin",
    "worker_cache": "_plugin",
    "CacheCoherence": "_relay",
    "PeerTier": "_peer",
    "PeerDirectory": "_peerdir",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"swarmstore.cache.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'swarmstore.cache' has no attribute {name!r}")
