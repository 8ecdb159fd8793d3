"""Garbage collection: apply retention, then delete what no kept checkpoint names.

:func:`collect_garbage` acts on a repository:

1. take ``locks/gc.json`` with a conditional put (one collection at a time) and renew it
   (``_lease``); a lock whose holder stopped renewing for a lease is broken;
2. per branch, keep what the :class:`RetentionPolicy` selects, plus the tip and every
   tagged snapshot; delete the other snapshot documents (and schema-1 manifests), and
   version refs older than the newest ``KEEP_VERSIONS`` whose snapshots are gone;
3. list ``objects/``, ``pieces/`` and ``snapshots/``: the candidates;
4. list ``inflight/``: if any save is in flight (its marker renewed within the lease),
   stop here: the sweep is deferred. Dead markers are deleted, and the sweep waits for
   the next collection;
5. list the refs again, read every snapshot they name and every piece those name: what
   is live;
6. delete each candidate that is not live.

Why this is safe beside a concurrent save: a save writes its ``inflight`` marker before
anything else and deletes it only after its commit. If the marker is seen in 4 nothing
is swept. If it was already gone, the save committed before 4, so its ref is read in 5
and everything it names is live. If the marker appears after 4, the save started after
the listing in 3: what it writes is not a candidate, and what it reuses from its base
(pieces, objects) is named by the base snapshot, which is the tip of its branch (kept)
or was committed after 3. A save declared dead (no heartbeat for a lease) finds its
marker gone when it checks, right before committing, and gives up.

Damaged snapshots and manifests are skipped and reported (``GCReport.damaged``); a
document of a newer schema defers the sweep, since this version cannot tell what it
names.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import swarmstore.checkpoint._trace as trace
from swarmstore import _clock
from swarmstore.checkpoint._lease import Lease, LeaseTerms, is_dead, read_doc
from swarmstore.checkpoint._manifest import GC_LOCK, INFLIGHT, MANIFESTS, OBJECTS, manifest_key
from swarmstore.checkpoint._refs import KEEP_VERSIONS
from swarmstore.checkpoint._retention import KeepBest, RetentionPolicy
from swarmstore.checkpoint._snapshot import PIECES, REFS, SNAPSHOTS, ref_key, snapshot_key
from swarmstore.errors import CheckpointNotFoundError, ManifestError, ManifestVersionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable

    from zarr.abc.store import Store

    from swarmstore.checkpoint._repo import Commit, Repo

__all__ = ["GCReport", "KeepBest", "RetentionPolicy", "collect_garbage"]

logger = logging.getLogger(__name__)

#: LocalStore's temporary files of interrupted writes (``<name>.<uuid>.partial``), which a
#: sweep deletes with the unnamed objects; no other unknown name is ever deleted.
_TEMP = re.compile(r".*\.[0-9a-f]{32}\.partial")


@dataclass
class GCReport:
    """What one garbage collection did."""

    kept: list[int] = field(default_factory=list)
    deleted_manifests: list[int] = field(default_factory=list)
    deleted_objects: int = 0
    deferred: bool = False
    reason: str = ""
    #: Steps whose snapshots or manifests are unreadable (damaged): skipped, kept, reported.
    damaged: list[int] = field(default_factory=list)
    deleted_pieces: int = 0
    deleted_snapshots: int = 0


async def _limited(aws: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[Any]) -> Any:
        async with sem:
            return await aw

    return await asyncio.gather(*(one(a) for a in aws))


async def _keys(store: Store, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


async def collect_garbage(repo: Repo, policy: RetentionPolicy, *, terms: LeaseTerms) -> GCReport:
    """Apply ``policy`` to every branch of ``repo`` and delete what nothing names."""
    lock = Lease(repo.control, GC_LOCK, {"what": "garbage collection"}, terms)
    if not await lock.acquire():
        return GCReport(deferred=True, reason="another garbage collection holds locks/gc.json")
    try:
        trace.point("gc:locked")
        return await _collect(repo, policy, terms, lock)
    finally:
        await lock.release()
        trace.point("gc:unlocked")


async def _markers(store: Store, terms: LeaseTerms, limit: int) -> tuple[int, int]:
    """Live and dead save markers; dead ones are deleted (their saves can never commit)."""
    keys = await _keys(store, INFLIGHT)
    docs = await _limited((read_doc(store, k) for k in keys), limit)
    now = _clock.wall()
    pairs = [(k, d) for k, d in zip(keys, docs, strict=True) if d is not None]
    dead = [k for k, d in pairs if is_dead(d, terms.lease, now)]
    await _limited((store.delete(k) for k in dead), limit)
    return len(pairs) - len(dead), len(dead)


async def _branches(repo: Repo) -> list[str]:
    names = set(await repo.refs.branches())
    if await repo.legacy_steps():
        names.add("main")
    return sorted(names)


async def _metadata(repo: Repo, commits: list[Commit], report: GCReport) -> list[Any]:
    async def one(c: Commit) -> Any:
        try:
            return SimpleNamespace(step=c.step, metadata=(await repo.snapshot(c.snapshot)).metadata)
        except ManifestVersionError:
            raise
        except (ManifestError, CheckpointNotFoundError) as e:
            logger.warning("Skipping a damaged checkpoint: %s", e)
            report.damaged.append(c.step)
            return None

    return [x for x in await _limited(map(one, commits), repo.limit) if x is not None]


async def _prune(repo: Repo, policy: RetentionPolicy, report: GCReport) -> None:
    """Step 2: drop what retention does not keep, on every branch."""
    tagged = {r.snapshot for r in (await repo.refs.tags()).values()}
    plans, keep_ids = [], set(tagged)
    for branch in await _branches(repo):
        history = await repo.history(branch)
        if not history:
            continue
        steps = policy.select(await _metadata(repo, history, report))
        kept = [c for c in history if c.step in steps or c is history[-1]]
        keep_ids.update(c.snapshot for c in kept)
        plans.append((branch, history, {c.snapshot for c in kept}))
        if branch == "main":
            report.kept = sorted({c.step for c in kept} | set(report.damaged))
    for branch, history, kept_here in plans:
        tip = max((c.version for c in history if c.version is not None), default=-1)
        for c in history:
            if c.snapshot in kept_here or c.snapshot in keep_ids or c.step in report.damaged:
                continue
            await _drop(repo, branch, c, tip)
            report.deleted_manifests.append(c.step)


async def _drop(repo: Repo, branch: str, commit: Commit, tip: int) -> None:
    if commit.version is None:
        await repo.control.delete(manifest_key(commit.step))
        return
    await repo.control.delete(snapshot_key(commit.snapshot))
    if commit.version < tip - KEEP_VERSIONS:
        key = ref_key(branch, commit.version)
        await repo.control.delete(key)
        repo.refs.forget(key)


async def _collect(repo: Repo, policy: RetentionPolicy, terms: LeaseTerms, lock: Lease) -> GCReport:
    report = GCReport()
    try:
        await _prune(repo, policy, report)
    except ManifestVersionError as e:
        return GCReport(deferred=True, reason=f"{e}: cannot tell what it names")
    trace.point("gc:pruned")
    store, limit = repo.control, repo.limit
    candidates = [k for p in (OBJECTS, PIECES, SNAPSHOTS) for k in await _keys(store, p)]
    live, dead = await _markers(store, terms, limit)
    if live or dead:
        report.deferred = True
        report.reason = (
            f"{live} save(s) in flight"
            if live
            else (f"removed {dead} dead save marker(s); the sweep waits for the next collection")
        )
        return report
    try:
        named = await _live(repo, report)
    except ManifestVersionError as e:
        report.deferred, report.reason = True, f"{e}: cannot tell what it names"
        return report
    if not await lock.held():
        report.deferred, report.reason = True, "the lock was lost while collecting"
        return report
    doomed = [k for k in candidates if k not in named]
    doomed += [k for p in (MANIFESTS, REFS) for k in await _keys(store, p) if _TEMP.fullmatch(k)]
    trace.point("gc:sweeping")
    await _limited((store.delete(k) for k in doomed), limit)
    report.deleted_objects = sum(k.startswith(OBJECTS) for k in doomed)
    report.deleted_pieces = sum(k.startswith(PIECES) for k in doomed)
    report.deleted_snapshots = sum(k.startswith(SNAPSHOTS) for k in doomed)
    logger.debug("GC dropped %s, deleted %d keys", report.deleted_manifests, len(doomed))
    return report


async def _live(repo: Repo, report: GCReport) -> set[str]:
    """Step 5: every snapshot, piece and object key a ref, tag or schema-1 manifest names."""
    from swarmstore.checkpoint._manifest import object_key
    from swarmstore.checkpoint._snapshot import piece_key

    ids = {r.snapshot for r in (await repo.refs.tags()).values()}
    for branch in await _branches(repo):
        ids.update(c.snapshot for c in await repo.history(branch))
    named: set[str] = set()
    snaps = []
    for sid in ids:
        named.add(snapshot_key(sid))  # a damaged one is kept too: it is not garbage
        try:
            snaps.append(await repo.snapshot(sid))
        except ManifestVersionError:
            raise
        except (ManifestError, CheckpointNotFoundError) as e:
            logger.warning("Skipping a damaged snapshot: %s", e)
    for snap in snaps:
        named.update(piece_key(h) for h in snap.piece_refs())
        named.update(object_key(h) for h in await repo.tree(snap).hashes())
    return named
