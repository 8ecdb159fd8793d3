"""Atomic, versioned, incremental checkpoints of Zarr data (see docs/checkpoint.md).

:class:`CheckpointManager` saves zarr groups, numpy and dask arrays as content-addressed
objects (xxh3-128 of the encoded chunk bytes; unchanged chunks are never written again),
records each checkpoint as a snapshot whose chunk references live in split,
content-addressed manifest pieces, and commits it by one conditional put of a small
branch ref. Restores are lazy read-only zarr stores (:class:`ManifestStore`) that plain
zarr, dask and xarray read; sessions (:class:`Session`) are writable ones.

Imports: errors, config, hashing, _clock, _events, _sync; never storage or cache: it asks a
store for what it can do by attribute (``supports_atomic_create``, ``is_cache``, zarr's sync
surface), never by type.
"""

from swarmstore.checkpoint._commit import commit_guarantee, put_if_absent
from swarmstore.checkpoint._drill import DrillReport, node_loss_drill
from swarmstore.checkpoint._gc import GCReport, collect_garbage
from swarmstore.checkpoint._info import (
    ArchiveReport,
    CheckpointDiff,
    CheckpointInfo,
    RestoreReport,
    VerifyReport,
)
from swarmstore.checkpoint._manager import CheckpointManager
from swarmstore.checkpoint._manifest import SCHEMA_VERSION, Manifest, content_hash
from swarmstore.checkpoint._retention import KeepBest, RetentionPolicy
from swarmstore.checkpoint._session import Session
from swarmstore.checkpoint._snapshot import Snapshot
from swarmstore.checkpoint._store import ManifestStore

__all__ = [
    "SCHEMA_VERSION",
    "ArchiveReport",
    "CheckpointDiff",
    "CheckpointInfo",
    "CheckpointManager",
    "DrillReport",
    "GCReport",
    "KeepBest",
    "Manifest",
    "ManifestStore",
    "RestoreReport",
    "RetentionPolicy",
    "Session",
    "Snapshot",
    "VerifyReport",
    "collect_garbage",
    "commit_guarantee",
    "content_hash",
    "node_loss_drill",
    "put_if_absent",
]
