"""CheckpointManager: atomic, versioned, incremental checkpoints of zarr, numpy and dask data."""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from swarmstore import _clock, config
from swarmstore.checkpoint import _json
from swarmstore.checkpoint import _trace as trace
from swarmstore.checkpoint._commit import put_if_absent
from swarmstore.checkpoint._gc import (
    GCReport,
    KeepBest,
    RetentionPolicy,
    _limited,
    collect_garbage,
    load_manifests,
)
from swarmstore.checkpoint._lease import Lease, LeaseTerms
from swarmstore.checkpoint._manifest import (
    INFLIGHT,
    MANIFESTS,
    Manifest,
    check_step,
    content_hash,
    is_metadata_key,
    manifest_key,
    object_key,
    step_from_manifest_key,
)
from swarmstore.checkpoint._objects import existing
from swarmstore.checkpoint._store import ManifestStore, control_store, forget_listings
from swarmstore.checkpoint._write import write_data
from swarmstore.errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ChecksumMismatch,
    ConfigError,
    LeaseLostError,
    ManifestError,
)

if TYPE_CHECKING:
    from types import TracebackType

    from zarr.abc.store import Store

__all__ = ["ArchiveReport", "CheckpointDiff", "CheckpointInfo", "CheckpointManager"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint; the ``written_*``/``reused_*`` figures are set by ``save``."""

    step: int
    id: str
    created: float
    metadata: dict[str, Any]
    parent: int | None
    nbytes: int
    nkeys: int
    written_objects: int = 0
    written_bytes: int = 0
    reused_objects: int = 0
    gc: GCReport | None = None

    @classmethod
    def of(cls, m: Manifest, **extra: Any) -> CheckpointInfo:
        return cls(m.step, m.id, m.created, m.metadata, m.parent, m.nbytes, len(m.entries), **extra)


@dataclass(frozen=True)
class CheckpointDiff:
    """Keys added, removed and changed from checkpoint ``a`` to ``b``."""

    a: int
    b: int
    added: list[str]
    removed: list[str]
    changed: list[str]
    #: Bytes of objects ``b`` names that ``a`` does not (what an incremental save wrote).
    new_bytes: int
    #: Paths of the zarr nodes (arrays, groups) holding any of those keys.
    nodes: list[str]


def _nodes_of(keys: set[str], entries: Mapping[str, Any]) -> list[str]:
    nodes = sorted(
        (k.rsplit("/", 1)[0] if "/" in k else "" for k in entries if is_metadata_key(k)),
        key=len,
        reverse=True,
    )
    found = set()
    for key in keys:
        found.add(next((n for n in nodes if not n or key.startswith(n + "/")), ""))
    return sorted(found)


@dataclass(frozen=True)
class ArchiveReport:
    """What ``archive`` copied: objects written, bytes written, objects already there."""

    step: int
    copied_objects: int
    copied_bytes: int
    skipped_objects: int


def _keep_best(value: Any) -> KeepBest | None:
    if value is None or isinstance(value, KeepBest):
        return value
    if isinstance(value, str):
        return KeepBest(value)
    if isinstance(value, Mapping):
        return KeepBest(**value)
    raise ConfigError(f"keep_best must be a metric name, a mapping or KeepBest, got {value!r}")


def _terms(lease: float | str | None, heartbeat: float | str | None) -> LeaseTerms:
    """Validated lease terms: both positive, renewals at least twice per lease."""
    values = {}
    for name, given in (("lease", lease), ("heartbeat", heartbeat)):
        value = config.get_seconds(f"checkpoint.{name}", given)
        if value is None or not value > 0:
            raise ConfigError(
                f"swarmstore.checkpoint.{name} must be a positive duration, "
                f"got {given if given is not None else value!r}"
            )
        values[name] = value
    if values["heartbeat"] * 2 > values["lease"]:
        raise ConfigError(
            f"swarmstore.checkpoint.heartbeat ({values['heartbeat']:g} s) must be at most half "
            f"the lease ({values['lease']:g} s), or live savers would look dead"
        )
    return LeaseTerms(**values)


def _flag(name: str, given: bool | None) -> bool:
    value = config.get(f"checkpoint.{name}") if given is None else given
    if not isinstance(value, bool):
        raise ConfigError(f"swarmstore.checkpoint.{name} must be true or false, got {value!r}")
    return value


def _count(name: str, given: int | None) -> int:
    value = config.get(f"checkpoint.{name}") if given is None else given
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"swarmstore.checkpoint.{name} must be a positive integer, got {value!r}")
    return value


def _snapshot(data: Any) -> Any:
    """Copy numpy arrays now, so a loop that mutates them in place cannot tear a save."""
    if isinstance(data, np.ndarray):
        return data.copy()
    if isinstance(data, Mapping):
        return {k: _snapshot(v) for k, v in data.items()}
    return data


class CheckpointManager:
    """Save, list, restore and prune checkpoints of zarr, numpy and dask data in one store.

    Parameters
    ----------
    store : zarr.abc.store.Store
        Where checkpoints live: ``LocalStore``, ``FsspecStore`` on S3, ``MemoryStore``,
        ``ReplicatedStore``, ``TieredStore``... The manager owns its namespace
        (``manifests/``, ``objects/``, ``inflight/``, ``locks/``).
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
        Check every whole-object read of a restore against its xxh3-128.
    concurrency : int, optional
        Store requests in flight at once for copies, loads and deletes.

    Notes
    -----
    A checkpoint exists once its manifest is committed, last, with one conditional put;
    a crash at any moment leaves earlier checkpoints intact and the partial one
    invisible. ``save`` calls of one manager run one at a time; ``save_async`` queues
    them on one background thread. Several managers (processes, hosts) may share a
    store: two saves of the same step cannot both commit (see :func:`commit_guarantee`),
    and garbage collection never deletes an object a kept manifest or a save in flight
    may name. Retention runs after each save when any rule is set.

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
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: str | Mapping[str, Any] | KeepBest | None = None,
        lease: float | str | None = None,
        verify: bool | None = None,
        concurrency: int | None = None,
        heartbeat: float | str | None = None,
    ) -> None:
        self.store = store
        #: Where manifests, markers and locks go: the store under any cache (TieredStore),
        #: so that every process sees the same committed state.
        self._control = control_store(store)
        self.policy = RetentionPolicy(
            keep_last=keep_last if keep_last is not None else config.get("checkpoint.keep-last"),
            keep_every=keep_every
            if keep_every is not None
            else config.get("checkpoint.keep-every"),
            keep_best=_keep_best(keep_best or config.get("checkpoint.keep-best")),
        )
        self.terms = _terms(lease, heartbeat)
        self.verify = _flag("verify", verify)
        self.concurrency = _count("concurrency", concurrency)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"CheckpointManager({self.store!r}, {self.policy})"

    # -- saving ---------------------------------------------------------------------------

    def save(
        self,
        data: Any,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> CheckpointInfo:
        """Write ``data`` as checkpoint ``step`` (default: newest + 1) and commit it.

        ``data`` is a zarr group or array, a numpy or dask array, or a (nested) mapping
        of them. ``encoding`` maps array paths to ``zarr.create_array`` arguments
        (``chunks``, ``shards``, ``compressors``...). Dask arrays are written by the
        workers holding their blocks. Raises :class:`CheckpointExistsError` if the step
        is already committed.
        """
        meta = dict(metadata or {})
        _json.check_plain(meta, "checkpoint metadata")
        if step is not None:
            step = check_step(step)
        with self._lock:
            info = self._save(data, step, meta, encoding or {})
        if self.policy.keeps_all:
            return info
        try:
            report = self.collect_garbage()
        except Exception:
            logger.warning("Retention after saving step %d failed", info.step, exc_info=True)
            return info
        return dataclasses.replace(info, gc=report)

    def save_async(
        self,
        data: Any,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Future[CheckpointInfo]:
        """Like :meth:`save`, in the background; errors surface on the returned future.

        numpy arrays (and ``metadata``) are copied before this returns, so the caller
        may go on mutating them.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="swarmstore-checkpoint")
        data, metadata = _snapshot(data), copy.deepcopy(metadata)
        return self._executor.submit(self.save, data, step, metadata, encoding=encoding)

    def _save(
        self, data: Any, step: int | None, metadata: dict[str, Any], encoding: Any
    ) -> CheckpointInfo:
        save_id = uuid.uuid4().hex
        marker = Lease(self._control, f"{INFLIGHT}{save_id}.json", {"step": step}, self.terms)
        sync(marker.write())
        trace.point("save:marker")
        try:
            ms, manifest = self._write(data, step, metadata, encoding, save_id)
            trace.point("save:written")
            if not sync(marker.held()):
                raise LeaseLostError(
                    f"the save of step {manifest.step} went without a heartbeat for longer "
                    f"than the {self.terms.lease:g} s lease and may have lost objects; "
                    "nothing was committed: save again"
                )
            if not sync(
                put_if_absent(self._control, manifest_key(manifest.step), manifest.to_bytes())
            ):
                raise CheckpointExistsError(
                    f"step {manifest.step} was committed by another writer while this one saved"
                )
            trace.point("save:committed")
        finally:
            try:
                sync(marker.release())
            except Exception:
                logger.warning("Could not remove save marker %s", marker.key, exc_info=True)
        trace.point("save:done")
        logger.debug("Committed step %d: %d objects written", manifest.step, ms.written_objects)
        return CheckpointInfo.of(
            manifest,
            written_objects=ms.written_objects,
            written_bytes=ms.written_bytes,
            reused_objects=ms.reused_objects,
        )

    def _write(
        self, data: Any, step: int | None, metadata: dict[str, Any], encoding: Any, save_id: str
    ) -> tuple[ManifestStore, Manifest]:
        steps = self.steps()
        if step is None:
            step = steps[-1] + 1 if steps else 0
        elif step in steps:
            raise CheckpointExistsError(f"step {step} is already committed in {self.store!r}")
        parent = self._newest_valid(steps)
        # reuse only the parent's objects that are really there: a lost one is rewritten
        claimed = parent.hashes() if parent else set()
        known = sync(existing(self._control, claimed, self.concurrency))
        ms = ManifestStore(self.store, known=frozenset(known), verify=self.verify)
        write_data(ms, data, encoding, self.concurrency)
        manifest = Manifest(
            step,
            dict(ms.entries),
            metadata,
            parent.step if parent else None,
            _clock.wall(),
            save_id,
        )
        return ms, manifest

    # -- reading --------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Committed steps, oldest first (a cheap listing; manifests are not read)."""

        forget_listings(self._control)

        async def go() -> list[int]:
            keys = [k async for k in self._control.list_prefix(MANIFESTS)]
            return sorted(s for k in keys if (s := step_from_manifest_key(k)) is not None)

        return sync(go())

    def manifest(self, step: int) -> Manifest:
        """The validated manifest of ``step``."""
        buf = sync(self._control.get(manifest_key(step), default_buffer_prototype()))
        if buf is None and forget_listings(self._control):
            buf = sync(self._control.get(manifest_key(step), default_buffer_prototype()))
        if buf is None:
            raise CheckpointNotFoundError(f"no checkpoint of step {step} in {self.store!r}")
        return Manifest.from_bytes(buf.to_bytes(), where=f"manifest of step {step}")

    def _newest_valid(self, steps: list[int]) -> Manifest | None:
        for step in reversed(steps):
            try:
                return self.manifest(step)
            except (ManifestError, CheckpointNotFoundError) as e:
                logger.warning("Skipping step %d: %s", step, e)
        return None

    def list(self) -> list[CheckpointInfo]:
        """Every committed checkpoint whose manifest validates, oldest first."""
        forget_listings(self._control)
        listing = sync(load_manifests(self._control, self.concurrency))
        return [CheckpointInfo.of(m) for m in listing.manifests]

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint whose manifest validates, or None."""
        m = self._newest_valid(self.steps())
        return CheckpointInfo.of(m) if m else None

    def open_store(self, step: int | None = None) -> ManifestStore:
        """A read-only zarr store of checkpoint ``step`` (default: latest)."""
        if step is None:
            newest = self.latest()
            if newest is None:
                raise CheckpointNotFoundError(f"no checkpoint in {self.store!r}")
            step = newest.step
        m = self.manifest(step)
        return ManifestStore(self.store, m.entries, read_only=True, verify=self.verify)

    def restore(self, step: int | None = None) -> zarr.Group | zarr.Array:
        """Checkpoint ``step`` (default: latest) as a lazy, read-only zarr group or array.

        Nothing is read but metadata until the arrays are indexed; dask
        (``da.from_zarr``) and xarray (``xr.open_zarr(mgr.open_store(step))``) read it too.
        """
        return zarr.open(store=self.open_store(step), mode="r")

    def diff(self, a: int, b: int) -> CheckpointDiff:
        """What changed from step ``a`` to step ``b``."""
        ea, eb = self.manifest(a).entries, self.manifest(b).entries
        old = {e[0] for e in ea.values() if isinstance(e, tuple)}
        new = {e for e in eb.values() if isinstance(e, tuple) and e[0] not in old}
        changed = {k for k in ea.keys() & eb.keys() if ea[k] != eb[k]}
        return CheckpointDiff(
            a,
            b,
            added=sorted(eb.keys() - ea.keys()),
            removed=sorted(ea.keys() - eb.keys()),
            changed=sorted(changed),
            new_bytes=sum(size for _, size in new),
            nodes=_nodes_of(set(ea.keys() ^ eb.keys()) | changed, {**ea, **eb}),
        )

    def verify_step(self, step: int) -> int:
        """Read every object of ``step`` and check its hash; return how many were checked."""
        hashes = sorted(self.manifest(step).hashes())
        bad: list[str] = []

        async def check(digest: str) -> None:
            buf = await self._control.get(object_key(digest), default_buffer_prototype())
            if buf is None or content_hash(buf.as_buffer_like()) != digest:
                bad.append(digest)

        sync(_limited(map(check, hashes), self.concurrency))
        if bad:
            raise ChecksumMismatch(
                f"step {step}: {len(bad)} of {len(hashes)} objects missing or corrupt, "
                f"e.g. {bad[:3]}"
            )
        return len(hashes)

    # -- retention and archiving ----------------------------------------------------------

    def collect_garbage(self) -> GCReport:
        """Apply retention, then delete objects no kept manifest names (see ``_gc``)."""
        forget_listings(self._control)
        return sync(
            collect_garbage(self._control, self.policy, terms=self.terms, limit=self.concurrency)
        )

    def archive(self, step: int, to: Store, *, verify_written: bool = True) -> ArchiveReport:
        """Copy checkpoint ``step`` to ``to`` (a cold store), checking every object's hash.

        Objects already in ``to`` are not copied again; each copied object is read back
        and checked when ``verify_written``. The manifest is committed last, so an
        interrupted archive leaves no visible checkpoint in ``to``.
        """
        forget_listings(self._control)
        forget_listings(to)
        raw = sync(self._control.get(manifest_key(step), default_buffer_prototype()))
        if raw is None:
            raise CheckpointNotFoundError(f"no checkpoint of step {step} in {self.store!r}")
        manifest = Manifest.from_bytes(raw.to_bytes(), where=f"manifest of step {step}")
        return sync(
            _archive(
                self.store,
                to,
                manifest,
                raw.to_bytes(),
                verify_written,
                self.concurrency,
                self.terms,
            )
        )

    # -- lifetime -------------------------------------------------------------------------

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


async def _archive(
    src: Store,
    dst: Store,
    manifest: Manifest,
    raw: bytes,
    verify_written: bool,
    limit: int,
    terms: LeaseTerms,
) -> ArchiveReport:
    proto = default_buffer_prototype()
    copied: list[int] = []
    skipped: list[str] = []
    control = control_store(dst)
    marker = Lease(control, f"{INFLIGHT}{uuid.uuid4().hex}.json", {"archive": manifest.step}, terms)
    await marker.write()

    async def copy_one(digest: str) -> None:
        key = object_key(digest)
        if await dst.exists(key):
            skipped.append(digest)
            return
        buf = await src.get(key, proto)
        if buf is None:
            raise CheckpointNotFoundError(f"object {digest} of step {manifest.step} is missing")
        if content_hash(buf.as_buffer_like()) != digest:
            raise ChecksumMismatch(f"object {digest} of step {manifest.step} fails its check")
        await dst.set(key, buf)
        if verify_written:
            back = await dst.get(key, proto)
            if back is None or content_hash(back.as_buffer_like()) != digest:
                raise ChecksumMismatch(f"object {digest} reads back wrong from {dst!r}")
        copied.append(len(buf))

    try:
        await _limited(map(copy_one, sorted(manifest.hashes())), limit)
        if not await put_if_absent(control, manifest_key(manifest.step), raw):
            held = await control.get(manifest_key(manifest.step), proto)
            if held is None or Manifest.from_bytes(held.to_bytes()).id != manifest.id:
                raise CheckpointExistsError(
                    f"{dst!r} already holds a different checkpoint of step {manifest.step}"
                )
    finally:
        await marker.release()
    return ArchiveReport(manifest.step, len(copied), sum(copied), len(skipped))
