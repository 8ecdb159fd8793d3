"""The checkpoint store as a repository: histories, snapshots and trees, read and cached.

A branch's history is its versions (``_refs``) whose snapshots still exist, preceded on
``main`` by the schema-1 checkpoints (``manifests/<step>.json``) of older releases, which
stay readable and restorable: each reads as a snapshot whose pieces are built in memory.
Everything cached here is immutable (snapshots, pieces, refs); what exists is always
taken from a fresh listing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarmstore._together import together
from swarmstore.checkpoint._caps import control_store, forget_listings
from swarmstore.checkpoint._docs import get_doc, list_keys
from swarmstore.checkpoint._manifest import (
    MANIFESTS,
    Manifest,
    manifest_key,
    step_from_manifest_key,
)
from swarmstore.checkpoint._refs import Refs
from swarmstore.checkpoint._snapshot import SNAPSHOTS, Snapshot, snapshot_key
from swarmstore.checkpoint._tree import Loader, Tree
from swarmstore.errors import CheckpointNotFoundError, ManifestError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.checkpoint._snapshot import Ref

__all__ = ["Commit", "Repo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Commit:
    """One entry of a branch's history."""

    step: int
    snapshot: str
    parent: str | None
    created: float
    #: The branch version that committed it; None for a schema-1 checkpoint.
    version: int | None


async def _keys(store: Store, prefix: str) -> list[str]:
    return await list_keys(store, prefix)


class Repo:
    """Shared, cached access to one checkpoint store (used by managers and sessions)."""

    def __init__(self, store: Store, *, limit: int = 32) -> None:
        self.store, self.control, self.limit = store, control_store(store), limit
        self.loader = Loader(store)
        self.refs = Refs(self.control, limit)
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._legacy: dict[str, Manifest] = {}
        self._no_legacy = False
        #: the readable refs the last ``history`` of each branch listed (its tip is last)
        self.refs_seen: dict[str, list[Ref]] = {}

    async def fresh(self) -> None:
        """Start from fresh listings (s3fs caches them; other processes change the store)."""
        forget_listings(self.control)

    # -- schema 1 --------------------------------------------------------------------------

    async def legacy_steps(self) -> list[int]:
        if self._no_legacy:
            return []  # schema-1 manifests are never written any more, only deleted
        keys = await _keys(self.control, MANIFESTS)
        steps = sorted(s for k in keys if (s := step_from_manifest_key(k)) is not None)
        self._no_legacy = not keys
        return steps

    async def legacy(self, step: int) -> Manifest:
        buf = await get_doc(self.control, manifest_key(step))
        if buf is None and forget_listings(self.control):
            buf = await get_doc(self.control, manifest_key(step))
        if buf is None:
            raise CheckpointNotFoundError(f"no checkpoint of step {step} in {self.store!r}")
        m = Manifest.from_bytes(buf.to_bytes(), where=f"manifest of step {step}")
        self._legacy[m.id] = m
        return m

    async def _legacy_commits(self) -> list[Commit]:
        steps = await self.legacy_steps()
        sem = asyncio.Semaphore(self.limit)

        async def one(step: int) -> Manifest | None:
            async with sem:
                try:
                    return await self.legacy(step)
                except (ManifestError, CheckpointNotFoundError) as e:
                    logger.warning("Skipping a damaged checkpoint: %s", e)
                    return None

        found = [m for m in await together(*map(one, steps)) if m is not None]
        return [Commit(m.step, m.id, None, m.created, None) for m in found]

    # -- schema 2 --------------------------------------------------------------------------

    async def history(self, branch: str) -> list[Commit]:
        """The branch's commits whose snapshots exist, oldest first."""
        refs, listed = await together(self.refs.history(branch), _keys(self.control, SNAPSHOTS))
        self.refs_seen[branch] = refs
        present = {k[len(SNAPSHOTS) : -len(".json")] for k in listed}
        commits = [
            Commit(r.step, r.snapshot, r.parent, r.created, r.version)
            for r in refs
            if r.snapshot in present
        ]
        if branch == "main":
            commits = await self._legacy_commits() + commits
        return commits

    async def snapshot(self, sid: str) -> Snapshot:
        """The snapshot ``sid`` (a schema-1 checkpoint's id reads as a snapshot too)."""
        if sid in self._snapshots:
            self._snapshots.move_to_end(sid)
            return self._snapshots[sid]
        if sid in self._legacy:
            m = self._legacy[sid]
            tree = Tree.from_entries(m.entries, self.loader)
            return Snapshot(m.id, None, m.step, m.created, m.metadata, tree.inline, tree.nodes)
        buf = await get_doc(self.store, snapshot_key(sid))
        if buf is None:
            raise CheckpointNotFoundError(f"no snapshot {sid} in {self.store!r}")
        snap = Snapshot.from_bytes(buf.to_bytes(), where=f"snapshot {sid}")
        self.remember(snap)
        return snap

    def remember(self, snap: Snapshot) -> None:
        """Cache a snapshot this process just committed (snapshots never change)."""
        self._snapshots[snap.id] = snap
        while len(self._snapshots) > 1024:
            self._snapshots.popitem(last=False)

    def tree(self, snap: Snapshot | None) -> Tree:
        return Tree.empty(self.loader) if snap is None else Tree.of(snap, self.loader)

    async def resolve(
        self,
        branch: str,
        *,
        step: int | None = None,
        snapshot: str | None = None,
        tag: str | None = None,
    ) -> Snapshot:
        """The snapshot a time-travel request names (default: the tip of ``branch``)."""
        if tag is not None:
            ref = await self.refs.read_tag(tag)
            if ref is None:
                raise CheckpointNotFoundError(f"no tag {tag!r} in {self.store!r}")
            return await self.snapshot(ref.snapshot)
        if snapshot is not None:
            try:
                return await self.snapshot(snapshot)
            except CheckpointNotFoundError:
                await self._legacy_commits()  # maybe a schema-1 checkpoint's id
                if snapshot not in self._legacy:
                    raise
                return await self.snapshot(snapshot)
        if step is None:
            tip = await self._tip_snapshot(branch)
            if tip is not None:
                return tip
        history = await self.history(branch)
        if step is None:
            return await self._newest(history, branch)
        for commit in reversed(history):
            if commit.step == step:
                return await self.snapshot(commit.snapshot)
        raise CheckpointNotFoundError(
            f"no checkpoint of step {step} on {branch!r} in {self.store!r}"
        )

    async def _tip_snapshot(self, branch: str) -> Snapshot | None:
        """The snapshot of the branch's newest readable version, if it reads: the newest
        of its history without listing ``snapshots/`` (one listing, the refs, not two;
        a listing costs a store as much as a large read). None: ask the history."""
        tip = await self.refs.tip(branch)
        if tip is None:
            return None
        try:
            return await self.snapshot(tip.snapshot)
        except (ManifestError, CheckpointNotFoundError) as e:
            logger.warning("The tip of %r does not read (%s): looking further back", branch, e)
            return None

    async def _newest(self, history: list[Commit], branch: str) -> Snapshot:
        for commit in reversed(history):
            try:
                return await self.snapshot(commit.snapshot)
            except (ManifestError, CheckpointNotFoundError) as e:
                logger.warning("Skipping step %d: %s", commit.step, e)
        raise CheckpointNotFoundError(f"no checkpoint on {branch!r} in {self.store!r}")
