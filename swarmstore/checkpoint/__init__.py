"""Atomic, versioned, incremental checkpoints of Zarr data (see docs/checkpoint.md).

:class:`CheckpointManager` saves zarr groups, numpy and dask arrays as content-addressed
objects (xxh3-128 of the encoded chunk bytes; unchanged chunks are never written again)
and commits each checkpoint with one conditional put of its manifest. Restores are lazy
read-only zarr stores (:class:`ManifestStore`) that plain zarr, dask and xarray read.

Imports: errors, config, hashing, _events, _sync; never storage or cache: it asks a store
for what it can do by attribute (``supports_atomic_create``), never by type.
"""

from swarmstore.checkpoint._commit import commit_guarantee, put_if_absent
from swarmstore.checkpoint._gc import GCReport, KeepBest, RetentionPolicy, collect_garbage
from swarmstore.checkpoint._manager import (
    ArchiveReport,
    CheckpointDiff,
    CheckpointInfo,
    CheckpointManager,
)
from swarmstore.checkpoint._manifest import SCHEMA_VERSION, Manifest, content_hash
from swarmstore.checkpoint._store import ManifestStore

__all__ = [
    "SCHEMA_VERSION",
    "ArchiveReport",
    "CheckpointDiff",
    "CheckpointInfo",
    "CheckpointManager",
    "GCReport",
    "KeepBest",
    "Manifest",
    "ManifestStore",
    "RetentionPolicy",
    "collect_garbage",
    "commit_guarantee",
    "content_hash",
    "put_if_absent",
]
