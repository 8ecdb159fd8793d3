"""The swarmstore stores the peers' suites run over, one builder per mode.

Each mode names the stock store it stands in for (``base``): the peer's test with that
stock store, in the same run, is the reference its outcome is compared with. Every store
lives under the test's own temporary directory, as zarr's ``LocalStore`` fixture does.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from swarmstore.cache import DiskTier, TieredStore
from swarmstore.checkpoint import ManifestStore
from swarmstore.storage import NodeSpec, ReplicatedStore

#: RAM tier of the TieredStore modes: roomy, so the RAM tier is exercised, not evicted
MEMORY_BYTES = 64 << 20


@dataclass(frozen=True)
class Mode:
    """A swarmstore store standing in for the stock store ``base`` ("memory" or "local")."""

    name: str
    base: str
    build: Callable[[pathlib.Path], Store]
    disk_tier: bool = False


def _replicated(root: pathlib.Path, *, memory: bool) -> ReplicatedStore:
    """Three nodes, two replicas each: every key on two nodes, every node a replica target."""
    if memory:
        nodes: list[Any] = [NodeSpec(MemoryStore(), zone=f"z{i}") for i in range(3)]
    else:
        nodes = [NodeSpec(f"file://{root}/node{i}", zone=f"z{i}") for i in range(3)]
    return ReplicatedStore(nodes, replicas=2, state_dir=root / "state")


def _tiered(backing: Store, root: pathlib.Path | None) -> TieredStore:
    disk = DiskTier(root / "cache") if root is not None else False
    return TieredStore(backing, memory_bytes=MEMORY_BYTES, disk=disk)


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("ss-replicated-memory", "memory", lambda p: _replicated(p, memory=True)),
        Mode("ss-replicated-local", "local", lambda p: _replicated(p, memory=False)),
        Mode("ss-tiered-ram", "memory", lambda p: _tiered(MemoryStore(), None)),
        Mode(
            "ss-tiered-disk",
            "local",
            lambda p: _tiered(LocalStore(p / "backing"), p),
            disk_tier=True,
        ),
        Mode(
            "ss-tiered-replicated",
            "local",
            lambda p: _tiered(_replicated(p, memory=False), p),
            disk_tier=True,
        ),
        Mode("ss-manifest", "memory", lambda p: ManifestStore(MemoryStore())),
    )
}


def build(mode: str, root: pathlib.Path) -> Store:
    """A fresh store of ``mode`` under ``root/swarmstore`` (created)."""
    where = root / "swarmstore"
    where.mkdir(parents=True, exist_ok=True)
    return MODES[mode].build(where)
