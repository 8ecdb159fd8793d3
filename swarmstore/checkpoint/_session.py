"""Sessions: write into a branch through a zarr store, then commit once.

``Session.store`` is a writable :class:`ManifestStore` over the branch's tip: plain zarr
or xarray (``to_zarr(region=...)``) write into it, and only the chunks they write are
encoded, hashed and stored. ``commit`` then runs the protocol, each step a point the
crash tests kill at (``_trace``):

1. ``save:marker``    the session's ``inflight/`` marker is written (at the start,
                      while the base snapshot is read) and renewed while it lives, so
                      collections spare its objects;
2. ``save:written``   the objects are in (written by zarr, or by Dask workers);
3. ``save:pieces``    the manifest pieces the changes fall into are rewritten, and,
4. ``save:snapshot``  in the same round trip, the snapshot document under a fresh id
                      (nothing names either until 5) and the check that the marker is
                      still this session's;
5. ``save:committed`` the branch moves: one conditional create of its next version.
                      If another writer moved it first, and the two changed disjoint
                      chunks, the session rebases onto the new tip and goes back to 3;
                      otherwise :class:`CheckpointConflictError`. The marker is removed
                      while the new version is checked for a ghost (``Refs.confirm``):
                      collections read refs only after markers, so the version protects
                      what it names from then on;
6. ``save:done``      the session is closed.

A crash before 5 leaves the branch where it was (the partial objects, pieces and
snapshot are garbage); after 5 the commit is complete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from zarr.core.sync import sync

import swarmstore.checkpoint._json as _json
import swarmstore.checkpoint._trace as trace
from swarmstore import _clock
from swarmstore.checkpoint._diff import changed_text, clashes, diff_trees
from swarmstore.checkpoint._docs import put_doc
from swarmstore.checkpoint._lease import Lease, LeaseTerms
from swarmstore.checkpoint._manifest import INFLIGHT, check_step, is_metadata_key
from swarmstore.checkpoint._objects import existing
from swarmstore.checkpoint._refs import KEEP_VERSIONS
from swarmstore.checkpoint._snapshot import Snapshot, new_id, piece_key, snapshot_key
from swarmstore.checkpoint._store import ManifestStore
from swarmstore.checkpoint._tree import merge
from swarmstore.errors import (
    CheckpointConflictError,
    CheckpointNotFoundError,
    LeaseLostError,
    ManifestError,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    from swarmstore.checkpoint._manifest import Entry
    from swarmstore.checkpoint._refs import Ref
    from swarmstore.checkpoint._repo import Commit, Repo

__all__ = ["Session", "open_session"]

logger = logging.getLogger(__name__)

ATTEMPTS = 8


class Session:
    """A writable view of one branch (see the module docstring); commit it once.

    ``full``: the writes are a whole new state (``CheckpointManager.save``): keys of the
    base that were not written are deleted at commit, and rewrites of unchanged bytes
    count as no change.
    """

    def __init__(
        self,
        repo: Repo,
        branch: str,
        tip: Ref | None,
        base: Snapshot | None,
        history: list[Commit],
        *,
        verify: bool,
        terms: LeaseTerms,
        known: Collection[str] = (),
        full: bool = False,
        marker: Lease | None = None,
    ) -> None:
        self.repo, self.branch, self.full = repo, branch, full
        self._tip, self.base, self._history = tip, base, history
        #: the base's entries; a full session's store starts empty (the writes are the whole
        #: new state) and is compared with this tree at commit
        self.tree = repo.tree(base)
        start = repo.tree(None) if full else self.tree
        self.store = ManifestStore(repo.store, base=start, verify=verify, known=known)
        self._kept: set[str] = set()
        self._pending: dict[str, Entry | None] | None = None
        self._claimed: set[str] = set()
        self.manifest_bytes = 0
        self._done = False
        #: written (and renewed) by ``open_session`` before anything else
        self._marker = marker or _marker(repo, branch, terms)
        self._released = False

    @property
    def parent(self) -> Snapshot | None:
        """The snapshot this session writes on top of (moves on a rebase)."""
        return self.base

    def keep(self, keys: Iterable[str]) -> None:
        """In a full session, keep these base keys as they are (unchanged chunks not rewritten)."""
        self._kept.update(keys)

    def fork(self) -> ManifestStore:
        """A writable copy for another process (a Dask task); ``merge`` what it changed."""
        store = ManifestStore(
            self.repo.store,
            base=self.store.base,
            verify=self.store.verify,
            known=self.store.known,
        )
        return store

    def merge(self, *changes: ManifestStore | Mapping[str, Entry | None]) -> None:
        """Take in the changes of forks (their stores, or the maps their tasks returned)."""
        mine = self.store.changes
        for part in changes:
            part = part.changes if isinstance(part, ManifestStore) else part
            for key, entry in part.items():
                if key in mine and mine[key] != entry and not is_metadata_key(key):
                    raise ValueError(f"two forks wrote {key!r} with different bytes")
                mine[key] = entry

    def commit(
        self,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        message: str = "",
        *,
        rebase: bool = True,
    ) -> Snapshot:
        """Commit the session's writes as ``step`` (default: newest step + 1) on its branch."""
        if self._done:
            raise RuntimeError("this session was committed or closed already; open a new one")
        meta = dict(metadata or {})
        _json.check_plain(meta, "checkpoint metadata")
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {message!r}")
        try:
            snap = sync(self._commit(step, meta, message, rebase))
        except CheckpointConflictError as e:
            if not getattr(e, "disjoint", False):
                self.close()
            raise  # disjoint: still open, so the caller can rebase() and commit again
        except BaseException:
            self.close()
            raise
        self.close()
        return snap

    def rebase(self) -> None:
        """Move onto the branch's current tip; :class:`CheckpointConflictError` on overlap."""
        sync(self._rebase(sync(self._changes()), True, None))

    def close(self) -> None:
        """Give up the session (its writes become garbage); idempotent."""
        if not self._done:
            self._done = True
            if not self._released:
                sync(self._marker.release())
            trace.point("save:done")

    def __del__(self) -> None:
        # a session dropped without commit or close: stop its heartbeat so its marker dies
        # within a lease (and no pending task is left for the interpreter to complain about)
        if not getattr(self, "_done", True):
            self._marker.abandon()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ----------------------------------------------------------------------

    def _step(self, step: int | None) -> int:
        steps = {c.step for c in self._history}
        if step is None:
            return max(steps) + 1 if steps else 0
        step = check_step(step)
        if step in steps:
            raise CheckpointConflictError(
                f"step {step} is already committed on branch {self.branch!r}"
            )
        return step

    async def _changes(self) -> dict[str, Entry | None]:
        if self._pending is None:
            self._pending = await self._effective()
        return self._pending

    async def _effective(self) -> dict[str, Entry | None]:
        """The writes as changes to the base (computed once, against the first base)."""
        changes = dict(self.store.changes)
        if not self.full:
            return changes
        before = await self.tree.entries()
        # the new state is the whole of it: any concurrent change to a key it holds (or
        # held) conflicts, even where it equals the base
        self._claimed = set(before) | set(changes)
        for key, entry in before.items():
            if key not in changes and key not in self._kept:
                changes[key] = None  # not part of the new state
            elif changes.get(key) == entry:
                del changes[key]  # rewritten unchanged
        return {k: e for k, e in changes.items() if e is not None or k in before}

    async def _commit(
        self, step: int | None, metadata: dict[str, Any], message: str, rebase: bool
    ) -> Snapshot:
        trace.point("save:written")
        changes = await self._changes()
        for _ in range(ATTEMPTS):
            number = self._step(step)
            snap, held = await self._write(changes, number, metadata, message)
            if not held:
                raise LeaseLostError(
                    f"the save of step {number} went without a heartbeat for longer than "
                    f"the {self._marker.terms.lease:g} s lease and may have lost objects; "
                    "nothing was committed: save again"
                )
            ref = await self.repo.refs.create_next(self.branch, self._tip, snap)
            if ref is not None:
                return await self._confirm(ref, snap)
            await self._rebase(changes, rebase, step)
        raise CheckpointConflictError(
            f"branch {self.branch!r} kept moving: {ATTEMPTS} commits in a row lost the race"
        )

    async def _confirm(self, ref: Ref, snap: Snapshot) -> Snapshot:
        """Check the created version is no ghost while the marker goes (it is not needed
        once the version exists: collections read refs after markers)."""
        confirmed, released = await asyncio.gather(
            self.repo.refs.confirm(ref), self._marker.release(), return_exceptions=True
        )
        self._released = True
        if isinstance(released, Exception):  # the marker dies within a lease anyway
            logger.warning("Could not remove the marker %s: %s", self._marker.key, released)
        if isinstance(confirmed, BaseException):
            raise confirmed
        if not confirmed:
            raise CheckpointConflictError(
                f"branch {self.branch!r} moved more than {KEEP_VERSIONS} versions past this "
                "session's base while it wrote: nothing was committed; save again"
            )
        self.repo.remember(snap)
        trace.point("save:committed")
        return snap

    async def _write(
        self, changes: dict[str, Entry | None], step: int, metadata: dict[str, Any], message: str
    ) -> tuple[Snapshot, bool]:
        """Pieces, then the snapshot; returns it and whether the marker is still ours."""
        merged = await merge(self.tree, changes, self.store.dropped)
        sem = asyncio.Semaphore(self.repo.limit)

        async def put(key: str, data: bytes) -> None:
            async with sem:
                await put_doc(self.repo.store, key, data)

        snap = Snapshot(
            new_id(),
            self.base.id if self.base else None,
            step,
            _clock.wall(),
            metadata,
            merged.inline,
            merged.nodes,
            message,
        )
        body = snap.to_bytes()
        #: bytes of manifest pieces and snapshot the (last) commit attempt wrote
        self.manifest_bytes = len(body) + sum(len(d) for _, d in merged.new)
        # pieces and snapshot together: neither is named by a ref until the branch moves
        pieces = asyncio.gather(*(put(piece_key(r.hash), d) for r, d in merged.new))
        _, _, held = await asyncio.gather(
            pieces, put_doc(self.repo.control, snapshot_key(snap.id), body), self._marker.held()
        )
        trace.point("save:pieces")
        trace.point("save:snapshot")
        return snap, held

    async def _rebase(
        self, changes: dict[str, Entry | None], rebase: bool, step: int | None
    ) -> None:
        """Move onto the branch's new tip if the two sides changed disjoint chunks."""
        tip = await self.repo.refs.tip(self.branch)
        history = await self.repo.history(self.branch)
        new_base = await self.repo.snapshot(tip.snapshot) if tip else None
        theirs = await diff_trees(self.tree, self.repo.tree(new_base))
        ours = dict.fromkeys(self._claimed, None) | changes if self.full else changes
        clash = clashes(ours, {k: changed_text(theirs, k) for k in theirs.keys})
        taken = step is not None and any(c.step == step for c in history)
        if clash or taken or not rebase:
            error = CheckpointConflictError(
                f"branch {self.branch!r} moved while this session wrote"
                + (f": both changed {clash[:5]}" if clash else "")
                + (f": step {step} was committed meanwhile" if taken else "")
                + ("" if clash or taken else ": the changes are disjoint, rebase() and commit")
            )
            error.keys, error.disjoint = clash, not clash and not taken  # type: ignore[attr-defined]
            raise error
        self._tip, self.base, self._history = tip, new_base, history
        self.tree = self.repo.tree(new_base)
        if not self.full:
            self.store.base = self.tree


async def _readable(repo: Repo, history: list[Commit]) -> Snapshot | None:
    for commit in reversed(history):
        try:
            return await repo.snapshot(commit.snapshot)
        except (ManifestError, CheckpointNotFoundError) as e:
            logger.warning("Skipping step %d: %s", commit.step, e)
    return None


def _marker(repo: Repo, branch: str, terms: LeaseTerms) -> Lease:
    return Lease(repo.control, f"{INFLIGHT}{new_id()}.json", {"branch": branch}, terms)


async def _base(
    repo: Repo, history: list[Commit], tip: Ref | None, full: bool
) -> tuple[Snapshot | None, set[str]]:
    """The snapshot a session builds on, and (full saves) which of its objects are there."""
    try:
        base = await repo.snapshot(tip.snapshot) if tip else await _readable(repo, history)
    except (ManifestError, CheckpointNotFoundError):
        if not full:
            raise  # a session builds on the tip's content: it must read
        base = await _readable(repo, history)
    known: set[str] = set()
    if full and base is not None:
        # reuse only the base's objects that are really there: a lost one is rewritten
        known = await existing(repo.control, await repo.tree(base).hashes(), repo.limit)
    return base, known


async def open_session(
    repo: Repo, branch: str, *, full: bool, verify: bool, terms: LeaseTerms
) -> Session:
    """A session on ``branch``'s tip (for a full save, over a damaged tip: on the newest
    snapshot that reads, since a full save only reuses its base's objects).

    The marker is written while the branch is listed and the base is read: nothing is
    stored before all three are done.
    """
    await repo.fresh()
    marker = _marker(repo, branch, terms)

    async def history_and_base() -> tuple[list[Commit], Ref | None, Snapshot | None, set[str]]:
        history = await repo.history(branch)
        seen = repo.refs_seen.get(branch)
        tip = seen[-1] if seen else None  # the newest readable version, from that listing
        return (history, tip, *await _base(repo, history, tip, full))

    found, wrote = await asyncio.gather(history_and_base(), marker.write(), return_exceptions=True)
    for outcome in (wrote, found):
        if isinstance(outcome, BaseException):
            await marker.release()
            raise outcome
    history, tip, base, known = found  # type: ignore[misc]
    session = Session(
        repo,
        branch,
        tip,
        base,
        history,
        verify=verify,
        terms=terms,
        known=known,
        full=full,
        marker=marker,
    )
    trace.point("save:marker")
    return session
