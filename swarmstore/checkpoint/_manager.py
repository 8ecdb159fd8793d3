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
from zarr.core.sync import sync

import swarmstore.checkpoint._json as _json
import swarmstore.checkpoint._ops as ops
from swarmstore.checkpoint._caps import as_store
from swarmstore.checkpoint._gc import GCReport, collect_garbage
from swarmstore.checkpoint._history import HistoryReads
from swarmstore.checkpoint._manifest import check_step
from swarmstore.checkpoint._repo import Repo
from swarmstore.checkpoint._session import Session, open_session
from swarmstore.checkpoint._settings import retention, settings
from swarmstore.checkpoint._snapshot import check_name
from swarmstore.checkpoint._write import Fingerprints, write_data

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from zarr.abc.store import Store

    from swarmstore.checkpoint._gc import KeepBest
    from swarmstore.checkpoint._info import (
        ArchiveReport,
        CheckpointInfo,
        RestoreReport,
        VerifyReport,
    )

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


def _copied(data: Any) -> Any:
    """Copy numpy arrays now, so a loop that mutates them in place cannot tear a save."""
    if isinstance(data, np.ndarray):
        return data.copy()
    if isinstance(data, Mapping):
        return {k: _copied(v) for k, v in data.items()}
    return data


class CheckpointManager(HistoryReads):
    """Save, list, restore and prune checkpoints of zarr, numpy and dask data in one store.

    Parameters
    ----------
    store : zarr.abc.store.Store
        Where checkpoints live: ``LocalStore``, ``FsspecStore`` on S3, ``MemoryStore``,
        ``ReplicatedStore``, ``TieredStore``..., or a path or URL (a path or ``file://``
        is a ``LocalStore``, another URL an ``FsspecStore``). The manager owns its namespace
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
        store: Store | str | os.PathLike[str],
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
        self.store = store = as_store(store)
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
        """Copy checkpoint ``step`` into ``to`` (any zarr store) as a checkpoint there,
        every object and piece checked as read and, with ``verify_written``, as written
        (see ``_archive``)."""
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
