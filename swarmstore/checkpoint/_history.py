"""The read side of a CheckpointManager: history, time travel, restores, diffs and refs.

:class:`HistoryReads` holds the methods that only read a checkpoint store (and the two
that create refs: ``tag`` and ``create_branch``); :class:`CheckpointManager` adds saving,
sessions, retention and the operator API on top. Every method starts from fresh
listings, so it sees what other processes committed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zarr
from zarr.core.sync import sync

import swarmstore.checkpoint._ops as ops
from swarmstore.checkpoint._info import CheckpointDiff, CheckpointInfo
from swarmstore.checkpoint._manifest import Manifest
from swarmstore.checkpoint._snapshot import check_name
from swarmstore.checkpoint._store import ManifestStore
from swarmstore.errors import CheckpointNotFoundError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.checkpoint._repo import Repo
    from swarmstore.checkpoint._snapshot import Snapshot

__all__ = ["HistoryReads"]

logger = logging.getLogger(__name__)


class HistoryReads:
    """Reads of one branch's history (``branch``) in ``store`` through ``repo``."""

    store: Store
    repo: Repo
    branch: str
    verify: bool

    def _history(self, branch: str | None) -> list[Any]:
        sync(self.repo.fresh())
        return sync(self.repo.history(check_name(branch or self.branch)))

    def steps(self, branch: str | None = None) -> list[int]:
        """Committed steps of the branch, in increasing order (refs are read, not snapshots)."""
        return sorted({c.step for c in self._history(branch)})

    def _info(self, snap: Snapshot, branch: str, **extra: Any) -> CheckpointInfo:
        parent = None
        if snap.parent is not None:
            try:
                parent = sync(self.repo.snapshot(snap.parent)).step
            except Exception:
                parent = None  # expired by retention
        return CheckpointInfo.of(snap, parent=parent, branch=branch, **extra)

    def list(self, branch: str | None = None) -> list[CheckpointInfo]:
        """Every committed checkpoint of the branch whose snapshot reads, oldest first."""
        branch = branch or self.branch
        out = []
        for commit in self._history(branch):
            try:
                snap = sync(self.repo.snapshot(commit.snapshot))
            except Exception as e:
                logger.warning("Skipping step %d: %s", commit.step, e)
                continue
            out.append(self._info(snap, branch))
        return out

    def log(self, branch: str | None = None) -> list[CheckpointInfo]:
        """The branch's history, newest first (ids, parents, steps, metadata, messages)."""
        return self.list(branch)[::-1]

    def latest(self, branch: str | None = None) -> CheckpointInfo | None:
        """The branch's newest checkpoint whose snapshot reads, or None."""
        try:
            snap = self.snapshot(branch=branch)
        except CheckpointNotFoundError:
            return None
        return self._info(snap, branch or self.branch)

    def snapshot(
        self,
        step: int | None = None,
        *,
        snapshot: str | None = None,
        tag: str | None = None,
        branch: str | None = None,
    ) -> Snapshot:
        """The snapshot a time-travel request names: a step, a snapshot id, a tag, or the
        tip of a branch (default: the manager's branch)."""
        sync(self.repo.fresh())
        branch = check_name(branch or self.branch)
        return sync(self.repo.resolve(branch, step=step, snapshot=snapshot, tag=tag))

    def manifest(self, step: int) -> Manifest:
        """Checkpoint ``step`` as one flat manifest (loads every piece; for tools and tests)."""
        snap = self.snapshot(step)
        entries = sync(self.repo.tree(snap).entries())
        parent = self._info(snap, self.branch).parent
        return Manifest(snap.step, entries, snap.metadata, parent, snap.created, snap.id)

    def open_store(
        self,
        step: int | None = None,
        *,
        snapshot: str | None = None,
        tag: str | None = None,
        branch: str | None = None,
    ) -> ManifestStore:
        """A read-only zarr store of a checkpoint (default: the branch's latest)."""
        snap = self.snapshot(step, snapshot=snapshot, tag=tag, branch=branch)
        return ManifestStore(
            self.store, base=self.repo.tree(snap), read_only=True, verify=self.verify
        )

    def restore(
        self,
        step: int | None = None,
        *,
        snapshot: str | None = None,
        tag: str | None = None,
        branch: str | None = None,
    ) -> zarr.Group | zarr.Array:
        """A checkpoint (default: the latest) as a lazy, read-only zarr group or array.

        Time travel by ``step``, ``snapshot`` id, ``tag`` or ``branch``. Nothing is read
        but metadata until the arrays are indexed, and then only the manifest pieces
        holding the chunks read; dask (``da.from_zarr``) and xarray
        (``xr.open_zarr(mgr.open_store(step))``) read it too.
        """
        store = self.open_store(step, snapshot=snapshot, tag=tag, branch=branch)
        return zarr.open(store=store, mode="r")

    def diff(self, a: int | str, b: int | str) -> CheckpointDiff:
        """What changed from ``a`` to ``b`` (steps on the manager's branch, or snapshot ids)."""
        return ops.diff(self, a, b)

    # -- refs ------------------------------------------------------------------------------

    def tag(self, name: str, step: int | None = None, *, snapshot: str | None = None) -> str:
        """Tag a checkpoint (default: the latest) with ``name``; tags never move."""
        return ops.tag(self, name, step, snapshot)

    def tags(self) -> dict[str, int]:
        """Every tag, with the step it names."""
        return {n: r.step for n, r in sync(self.repo.refs.tags()).items()}

    def create_branch(
        self,
        name: str,
        step: int | None = None,
        *,
        snapshot: str | None = None,
        tag: str | None = None,
    ) -> CheckpointInfo:
        """Start branch ``name`` at a checkpoint of this manager's branch (default: latest)."""
        return ops.create_branch(self, name, step, snapshot, tag)

    def branches(self) -> list[str]:
        """Names of every branch (``main`` included once it has a checkpoint)."""
        names = set(sync(self.repo.refs.branches()))
        if sync(self.repo.legacy_steps()):
            names.add("main")
        return sorted(names)
