"""CheckpointManager: atomic, versioned, incremental checkpoints of zarr, numpy and dask data."""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

import swarmstore.checkpoint._json as _json
import swarmstore.checkpoint._ops as ops
from swarmstore.checkpoint._gc import GCReport, collect_garbage
from swarmstore.checkpoint._info import (
    ArchiveReport,
    CheckpointDiff,
    CheckpointInfo,
    RestoreReport,
    VerifyReport,
)
from swarmstore.checkpoint._manifest import Manifest, check_step
from swarmstore.checkpoint._repo import Repo
from swarmstore.checkpoint._session import Session, open_session
from swarmstore.checkpoint._settings import retention, settings
from swarmstore.checkpoint._snapshot import check_name
from swarmstore.checkpoint._store import ManifestStore
from swarmstore.checkpoint._write import Fingerprints, write_data
from swarmstore.errors import CheckpointNotFoundError

if TYPE_CHECKING:
    from types import TracebackType

    from zarr.abc.store import Store

    from swarmstore.checkpoint._gc import KeepBest
    from swarmstore.checkpoint._snapshot import Snapshot

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


def _copied(data: Any) -> Any:
    """Copy numpy arrays now, so a loop that mutates them in place cannot tear a save."""
    if isinstance(data, np.ndarray):
        return data.copy()
    if isinstance(data, Mapping):
        return {k: _copied(v) for k, v in data.items()}
    return data


class CheckpointManager:
    """Save, list, restore and prune checkpoints of zarr, numpy and dask data in one store.

    Parameters
    ----------
    store : zarr.abc.store.Store
        Where checkpoints live: ``LocalStore``, ``FsspecStore`` on S3, ``MemoryStore``,
        ``ReplicatedStore``, ``TieredStore``... The manager owns its namespace
        (``snapshots/``, ``pieces/``, ``objects/``, ``refs/``, ``inflight/``, ``locks/``,
        and the schema-1 ``manifests/`` it still reads).
    branch : str
        The branch ``save``, ``session`` and the read methods use by default (``main``).
    keep_last, keep_every : int, optional
        Retention: the newest ``keep_last`` steps, and every step divisible by
        ``keep_every`` (config ``swarmstore.checkpoint.keep-last`` / ``keep-every``).
    keep_best : str, mapping or KeepBest, optional
        Also keep the best checkpoints by a metric in their metadata
        (``"loss"`` or ``{"metric": "acc", "n": 3, "mode": "max"}``).
    lease : float or str, optional
        How long a save (or collection) may go without renewing its marker (lock) before
        others treat it as dead (config ``checkpoint.lease``, default 45 s).
    heartbeat : float or str, optional
        How often saves and collections renew their markers (``checkpoint.heartbeat``).
    verify : bool, optional
        Check every object a restore reads against its xxh3-128.
    concurrency : int, optional
        Store requests in flight at once for copies, loads and deletes (at least 1).

    Notes
    -----
    A checkpoint is a snapshot committed on a branch: its version of the branch is
    created, last, with one conditional put (``_session``); a crash at any moment leaves
    earlier checkpoints intact and the partial one invisible. Two writers racing on a
    branch: one wins; the other rebases when they changed disjoint chunks, else gets
    :class:`~swarmstore.errors.CheckpointConflictError`. ``save`` calls of one manager
    run one at a time; ``save_async`` queues them on one background thread. Garbage
    collection never deletes what a kept snapshot or a save in flight may name.

    Examples
    --------
    >>> import numpy as np, zarr
    >>> mgr = CheckpointManager(zarr.storage.MemoryStore(), keep_last=2)
    >>> for step in range(3):
    ...     info = mgr.save({"w": np.full((4, 4), step)}, metadata={"loss": 1 / (step + 1)})
    >>> [c.step for c in mgr.list()]
    [1, 2]
    >>> int(mgr.restore()["w"][0, 0])
    2
    """

    def __init__(
        self,
        store: Store,
        *,
        branch: str = "main",
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: str | Mapping[str, Any] | KeepBest | None = None,
        lease: float | str | None = None,
        verify: bool | None = None,
        concurrency: int | None = None,
        heartbeat: float | str | None = None,
    ) -> None:
        self.store = store
        self.branch = check_name(branch)
        self.terms, self.verify, self.concurrency = settings(lease, heartbeat, verify, concurrency)
        self.policy = retention(keep_last, keep_every, keep_best)
        self.repo = Repo(store, limit=self.concurrency)
        self._fingerprints = Fingerprints()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"CheckpointManager({self.store!r}, branch={self.branch!r}, {self.policy})"

    @property
    def _control(self) -> Store:
        return self.repo.control

    # -- writing ---------------------------------------------------------------------------

    def session(self, branch: str | None = None, *, full: bool = False) -> Session:
        """A writable session on ``branch``'s tip: write with zarr or xarray, then commit.

        >>> import numpy as np, zarr
        >>> mgr = CheckpointManager(zarr.storage.MemoryStore())
        >>> _ = mgr.save({"x": np.zeros((4, 4))}, encoding={"x": {"chunks": (2, 2)}})
        >>> with mgr.session() as s:
        ...     zarr.open_array(s.store, path="x", mode="r+")[:2, :2] = 1
        ...     snap = s.commit(metadata={"region": "top-left"})
        >>> float(mgr.restore()["x"][:].sum()), mgr.steps()
        (4.0, [0, 1])
        """
        branch = check_name(branch or self.branch)
        return sync(
            open_session(self.repo, branch, full=full, verify=self.verify, terms=self.terms)
        )

    def save(
        self,
        data: Any,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
        message: str = "",
        branch: str | None = None,
    ) -> CheckpointInfo:
        """Write ``data`` as checkpoint ``step`` (default: newest + 1) and commit it.

        ``data`` is a zarr group or array, a numpy or dask array, or a (nested) mapping
        of them; the checkpoint holds exactly that. ``encoding`` maps array paths to
        ``zarr.create_array`` arguments (``chunks``, ``shards``, ``compressors``...).
        Dask arrays are written by the workers holding their blocks. Raises
        :class:`CheckpointExistsError` if the step is already committed on the branch.
        """
        meta = dict(metadata or {})
        _json.check_plain(meta, "checkpoint metadata")
        step = None if step is None else check_step(step)
        with self._lock:
            info = self._save(data, step, meta, encoding or {}, message, branch)
        if self.policy.keeps_all:
            return info
        try:
            report = self.collect_garbage()
        except Exception:
            logger.warning("Retention after saving step %d failed", info.step, exc_info=True)
            return info
        return dataclasses.replace(info, gc=report)

    def _save(
        self,
        data: Any,
        step: int | None,
        metadata: dict[str, Any],
        encoding: Any,
        message: str,
        branch: str | None,
    ) -> CheckpointInfo:
        session = self.session(branch, full=True)
        try:
            write_data(session, data, encoding, self.concurrency, self._fingerprints)
            snap = session.commit(step, metadata, message)
        finally:
            session.close()
        self._fingerprints.committed(snap.id)
        w = session.store.writer
        logger.debug("Committed step %d: %d objects written", snap.step, w.written_objects)
        return self._info(
            snap,
            session.branch,
            written_objects=w.written_objects,
            written_bytes=w.written_bytes,
            reused_objects=w.reused_objects,
            manifest_bytes=session.manifest_bytes,
        )

    def save_async(
        self,
        data: Any,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
        message: str = "",
    ) -> Future[CheckpointInfo]:
        """Like :meth:`save`, in the background; errors surface on the returned future.

        numpy arrays (and ``metadata``) are copied before this returns, so the caller
        may go on mutating them.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="swarmstore-checkpoint")
        data, metadata = _copied(data), copy.deepcopy(metadata)
        return self._executor.submit(
            self.save, data, step, metadata, encoding=encoding, message=message
        )

    # -- reading ---------------------------------------------------------------------------

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

    # -- operators -------------------------------------------------------------------------

    def verify_report(self, steps: int | list[int] | None = None) -> VerifyReport:
        """Read and check every object of ``steps`` (default: all); report damage, never raise."""
        return ops.verify(self, steps)

    def verify_step(self, step: int) -> int:
        """Check every object of ``step``; return how many, raise ``ChecksumMismatch`` if bad."""
        return ops.verify_or_raise(self, step)

    def restore_to(
        self,
        target: Store | str,
        step: int | None = None,
        *,
        force: bool = False,
        snapshot: str | None = None,
        tag: str | None = None,
    ) -> RestoreReport:
        """Copy a checkpoint into ``target`` as a plain zarr hierarchy (see ``_ops``)."""
        return ops.restore_to(self, target, step, force=force, snapshot=snapshot, tag=tag)

    def archive(self, step: int, to: Store, *, verify_written: bool = True) -> ArchiveReport:
        """Copy checkpoint ``step`` to ``to`` (a cold store), checking every object's hash."""
        return ops.archive(self, step, to, verify_written=verify_written)

    def collect_garbage(self) -> GCReport:
        """Apply retention, then delete what no kept snapshot names (see ``_gc``)."""
        sync(self.repo.fresh())
        return sync(collect_garbage(self.repo, self.policy, terms=self.terms))

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for queued ``save_async`` calls, then stop the background thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
