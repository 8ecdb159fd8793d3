"""Operator actions on a manager's store: diff, tags and branches, verify, restore, archive.

The operator API (what ``swarmstore checkpoint ...`` calls) never raises for damage it
exists to find: :func:`verify` returns a :class:`VerifyReport`, and :func:`restore_to`
checks every object before it writes anything, writes into a temporary location, and
leaves nothing behind when it fails.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from swarmstore import _clock
from swarmstore._together import together
from swarmstore.checkpoint._archive import archive_snapshot
from swarmstore.checkpoint._caps import forget_listings, get_whole
from swarmstore.checkpoint._diff import diff_trees
from swarmstore.checkpoint._info import ArchiveReport, CheckpointDiff, RestoreReport, VerifyReport
from swarmstore.checkpoint._manifest import content_hash, is_metadata_key, object_key
from swarmstore.checkpoint._snapshot import Ref, check_name
from swarmstore.errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ChecksumMismatch,
    ManifestError,
)

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.checkpoint._info import CheckpointInfo
    from swarmstore.checkpoint._lease import LeaseTerms
    from swarmstore.checkpoint._repo import Repo
    from swarmstore.checkpoint._snapshot import Snapshot


class CheckpointManager(Protocol):
    """What these actions use of a manager (``_manager`` imports this module, not back)."""

    store: Store
    repo: Repo
    terms: LeaseTerms
    concurrency: int
    verify: bool

    def snapshot(
        self,
        step: int | None = None,
        *,
        snapshot: str | None = None,
        tag: str | None = None,
        branch: str | None = None,
    ) -> Snapshot: ...

    def steps(self, branch: str | None = None) -> list[int]: ...

    def _info(self, snap: Snapshot, branch: str, **extra: Any) -> CheckpointInfo: ...


__all__ = ["archive", "diff", "restore_to", "tag", "verify"]


def _resolve(mgr: CheckpointManager, which: int | str) -> Snapshot:
    if isinstance(which, str):
        return mgr.snapshot(snapshot=which)
    return mgr.snapshot(which)


def _nodes_of(keys: set[str], inline: dict[str, Any]) -> list[str]:
    nodes = sorted(
        (k.rsplit("/", 1)[0] if "/" in k else "" for k in inline if is_metadata_key(k)),
        key=len,
        reverse=True,
    )
    found = set()
    for key in keys:
        found.add(next((n for n in nodes if not n or key.startswith(n + "/")), ""))
    return sorted(found)


def diff(mgr: CheckpointManager, a: int | str, b: int | str) -> CheckpointDiff:
    """What changed from ``a`` to ``b``, reading only the pieces that differ."""
    sa, sb = _resolve(mgr, a), _resolve(mgr, b)
    d = sync(diff_trees(mgr.repo.tree(sa), mgr.repo.tree(sb)))
    old = {
        e[0]
        for e in (*d.removed.values(), *(x for x, _ in d.changed.values()))
        if not isinstance(e, str)
    }
    new = {
        e
        for e in (*d.added.values(), *(y for _, y in d.changed.values()))
        if not isinstance(e, str) and e[0] not in old
    }
    return CheckpointDiff(
        sa.step,
        sb.step,
        added=sorted(d.added),
        removed=sorted(d.removed),
        changed=sorted(d.changed),
        new_bytes=sum(size for _, size in new),
        nodes=_nodes_of(d.keys, {**sa.inline, **sb.inline}),
    )


def _target_ref(
    mgr: CheckpointManager, step: int | None, snapshot: str | None, tag_name: str | None = None
) -> Ref:
    snap = mgr.snapshot(step, snapshot=snapshot, tag=tag_name)
    return Ref("tag", "x", 0, snap.id, snap.step, snap.parent, _clock.wall())


def tag(mgr: CheckpointManager, name: str, step: int | None, snapshot: str | None) -> str:
    """Tag a checkpoint; return the snapshot id it names."""
    ref = sync(mgr.repo.refs.tag(name, _target_ref(mgr, step, snapshot)))
    return ref.snapshot


def create_branch(
    mgr: CheckpointManager, name: str, step: int | None, snapshot: str | None, tag_name: str | None
) -> CheckpointInfo:
    """Start branch ``name`` at a checkpoint: its version 0 names that snapshot."""
    check_name(name)
    snap = mgr.snapshot(step, snapshot=snapshot, tag=tag_name)
    if sync(mgr.repo.refs.tip(name)) is not None:
        raise CheckpointExistsError(f"branch {name!r} exists")
    if sync(mgr.repo.refs.advance(name, None, snap)) is None:
        raise CheckpointExistsError(f"branch {name!r} was created by another writer meanwhile")
    return mgr._info(snap, name)


async def _check_objects(
    store: Store, hashes: list[str], limit: int
) -> tuple[list[str], list[str]]:
    missing: list[str] = []
    corrupt: list[str] = []
    sem = asyncio.Semaphore(limit)

    async def check(digest: str) -> None:
        async with sem:
            buf = await get_whole(store, object_key(digest))
            if buf is None and forget_listings(store):
                buf = await get_whole(store, object_key(digest))
            if buf is None:
                missing.append(digest)
            elif content_hash(buf.as_buffer_like()) != digest:
                corrupt.append(digest)

    await together(*map(check, hashes))
    return sorted(missing), sorted(corrupt)


async def _verify_snapshot(
    mgr: CheckpointManager, snap: Snapshot
) -> tuple[int, list[str], list[str]]:
    hashes = sorted(await mgr.repo.tree(snap).hashes())
    missing, corrupt = await _check_objects(mgr.repo.control, hashes, mgr.concurrency)
    return len(hashes), missing, corrupt


def verify(mgr: CheckpointManager, steps: int | list[int] | None) -> VerifyReport:
    """Read every object of each step and check it; report damage (never raise for it)."""
    report = VerifyReport()
    wanted = mgr.steps() if steps is None else [steps] if isinstance(steps, int) else steps
    for step in wanted:
        try:
            checked, missing, corrupt = sync(_verify_snapshot(mgr, mgr.snapshot(step)))
        except CheckpointNotFoundError as e:
            report.missing[step] = [str(e)]
            continue
        except ManifestError as e:
            report.unreadable[step] = str(e)
            continue
        report.checked[step] = checked
        if missing:
            report.missing[step] = missing
        if corrupt:
            report.corrupt[step] = corrupt
    return report


def _raise_if_damaged(step: int, checked: int, missing: list[str], corrupt: list[str]) -> None:
    bad = missing + corrupt
    if bad:
        raise ChecksumMismatch(
            f"step {step}: {len(bad)} of {checked} objects missing or corrupt, e.g. {bad[:3]}"
        )


def verify_or_raise(mgr: CheckpointManager, step: int) -> int:
    """Like :func:`verify` for one step, raising ``ChecksumMismatch`` on damage."""
    checked, missing, corrupt = sync(_verify_snapshot(mgr, mgr.snapshot(step)))
    _raise_if_damaged(step, checked, missing, corrupt)
    return checked


# -- restore_to ----------------------------------------------------------------------------


def _local_root(target: Store | str | os.PathLike[str]) -> pathlib.Path | None:
    if isinstance(target, str | os.PathLike) and "://" not in str(target):
        return pathlib.Path(target)
    if isinstance(target, str) and target.startswith("file://"):
        return pathlib.Path(target[len("file://") :])
    if isinstance(target, zarr.storage.LocalStore):
        return pathlib.Path(target.root)
    return None


async def _copy_keys(src: Store, dst: Store, keys: list[str], limit: int) -> int:
    """Copy ``keys`` (metadata documents last, so a reader never sees a half hierarchy)."""
    proto = default_buffer_prototype()
    sem = asyncio.Semaphore(limit)
    total = 0

    async def one(key: str) -> None:
        nonlocal total
        async with sem:
            buf = await src.get(key, proto)
            if buf is not None:
                await dst.set(key, buf)
                total += len(buf)

    ordered = sorted(keys, key=is_metadata_key)
    await together(*(one(k) for k in ordered if not is_metadata_key(k)))
    await together(*(one(k) for k in ordered if is_metadata_key(k)))
    return total


def restore_to(
    mgr: CheckpointManager,
    target: Store | str,
    step: int | None,
    *,
    force: bool,
    snapshot: str | None = None,
    tag: str | None = None,
) -> RestoreReport:
    """Copy a checkpoint into ``target`` as a plain zarr hierarchy, all or nothing.

    Every object is read and checked first (``ChecksumMismatch``/``CheckpointNotFoundError``
    before anything is written). A local directory is written next to the target and
    renamed into place; any other store is written directly and, on failure, the keys
    written are deleted. A non-empty target is refused unless ``force`` (then it is
    replaced: keys the checkpoint lacks are removed).
    """
    from swarmstore.checkpoint._store import ManifestStore

    snap = mgr.snapshot(step, snapshot=snapshot, tag=tag)
    _raise_if_damaged(snap.step, *sync(_verify_snapshot(mgr, snap)))
    src = ManifestStore(mgr.store, base=mgr.repo.tree(snap), read_only=True, verify=True)
    keys = sync(_all_keys(src))
    root = _local_root(target)
    if root is not None:
        return _restore_local(src, root, keys, snap.step, force, mgr.concurrency)
    assert not isinstance(target, str)
    return _restore_store(src, target, keys, snap.step, force, mgr.concurrency)


async def _delete(store: Store, keys: set[str], *, quiet: bool) -> None:
    await asyncio.gather(*(store.delete(k) for k in keys), return_exceptions=quiet)


async def _all_keys(store: Store) -> list[str]:
    return [k async for k in store.list()]


def _restore_local(
    src: Store, root: pathlib.Path, keys: list[str], step: int, force: bool, limit: int
) -> RestoreReport:
    if root.exists() and any(root.iterdir()) and not force:
        raise CheckpointExistsError(f"{root} is not empty: pass force=True to replace it")
    tmp = root.with_name(f".{root.name}.{uuid.uuid4().hex}.partial")
    try:
        nbytes = sync(_copy_keys(src, zarr.storage.LocalStore(tmp), keys, limit))
        old = root.with_name(f".{root.name}.{uuid.uuid4().hex}.old")
        if root.exists():
            root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RestoreReport(step, len(keys), nbytes, str(root))


def _restore_store(
    src: Store, dst: Store, keys: list[str], step: int, force: bool, limit: int
) -> RestoreReport:
    before = sync(_all_keys(dst))
    if before and not force:
        raise CheckpointExistsError(f"{dst!r} is not empty: pass force=True to replace it")
    try:
        nbytes = sync(_copy_keys(src, dst, keys, limit))
    except BaseException:
        sync(_delete(dst, set(keys) - set(before), quiet=True))
        raise
    sync(_delete(dst, set(before) - set(keys), quiet=False))
    return RestoreReport(step, len(keys), nbytes, repr(dst))


# -- archive -------------------------------------------------------------------------------


def archive(mgr: CheckpointManager, step: int, to: Store, *, verify_written: bool) -> ArchiveReport:
    """Copy checkpoint ``step`` to ``to`` (see ``_archive``): objects, pieces, the
    snapshot, each checked, then a version of ``to``'s ``main`` naming it."""
    snap = mgr.snapshot(step)
    return sync(
        archive_snapshot(
            mgr.repo,
            snap,
            to,
            terms=mgr.terms,
            limit=mgr.concurrency,
            verify_written=verify_written,
        )
    )
