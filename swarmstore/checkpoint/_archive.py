"""Archive: copy one checkpoint into another store, checked on the way, as a checkpoint there.

:func:`archive` copies what one snapshot names (its chunk objects, its manifest pieces,
the snapshot document) from a manager's store into ``to``, any zarr store (another
``ReplicatedStore``, a plain ``LocalStore``, S3), and commits it there as a version of
``to``'s ``main``, so ``CheckpointManager(to)`` lists, restores and verifies it.

Every object and piece is checked against its xxh3-128 as it is read from the source
(``ChecksumMismatch``, ``CheckpointNotFoundError``; nothing is committed in ``to`` then).
With ``verify_written`` each one is read back from ``to`` and checked again, and an
object or piece ``to`` already holds is read and checked too before it is reused: a copy
that fails its check there is written again (``ArchiveReport.repaired_objects``), so an
archive never commits a snapshot whose bytes do not read back. An ``inflight/`` marker
in ``to`` keeps ``to``'s collections from sweeping the copies before the commit.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from zarr.core.buffer import default_buffer_prototype

from swarmstore._together import together
from swarmstore.checkpoint._caps import control_store, forget_listings, get_whole
from swarmstore.checkpoint._info import ArchiveReport
from swarmstore.checkpoint._lease import Lease
from swarmstore.checkpoint._manifest import INFLIGHT, content_hash, object_key
from swarmstore.checkpoint._refs import Refs
from swarmstore.checkpoint._snapshot import piece_key, snapshot_key
from swarmstore.errors import CheckpointExistsError, CheckpointNotFoundError, ChecksumMismatch

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.checkpoint._lease import LeaseTerms
    from swarmstore.checkpoint._repo import Repo
    from swarmstore.checkpoint._snapshot import Ref, Snapshot
    from swarmstore.checkpoint._tree import Tree

__all__ = ["archive_snapshot"]

#: Tries to move ``to``'s main when other writers keep moving it.
ATTEMPTS = 8


class _Copier:
    """Copies content-addressed values from ``src`` to ``dst``, each checked (see module)."""

    def __init__(self, src: Store, dst: Store, limit: int, verify_written: bool) -> None:
        self.src, self.dst, self.verify_written = src, dst, verify_written
        self.sem = asyncio.Semaphore(limit)
        self.proto = default_buffer_prototype()
        self.copied = self.copied_bytes = self.skipped = self.repaired = 0

    async def _good_in_dst(self, key: str, digest: str) -> bool | None:
        """True: ``dst`` holds ``key`` intact; False: it holds a bad copy; None: absent."""
        if not self.verify_written:
            return True if await self.dst.exists(key) else None
        buf = await get_whole(self.dst, key, self.proto)
        if buf is None:
            return None
        return content_hash(buf.as_buffer_like()) == digest

    async def copy(self, key: str, digest: str, held: bytes | None = None) -> None:
        """Copy ``key`` (named by ``digest``; ``held``: its bytes already in hand)."""
        async with self.sem:
            there = await self._good_in_dst(key, digest)
            if there:
                self.skipped += 1
                return
            data = held if held is not None else await self._read_source(key, digest)
            await self.dst.set(key, self.proto.buffer.from_bytes(data))
            if self.verify_written and not await self._good_in_dst(key, digest):
                raise ChecksumMismatch(f"{key} reads back wrong from {self.dst!r}")
            self.copied += 1
            self.copied_bytes += len(data)
            self.repaired += there is False  # a bad copy was there

    async def _read_source(self, key: str, digest: str) -> bytes:
        buf = await get_whole(self.src, key, self.proto)
        if buf is None:
            raise CheckpointNotFoundError(f"{key} is missing from {self.src!r}")
        data = buf.to_bytes()
        if content_hash(data) != digest:
            raise ChecksumMismatch(f"{key} in {self.src!r} fails its xxh3 check")
        return data


async def archive_snapshot(
    repo: Repo, snap: Snapshot, to: Store, *, terms: LeaseTerms, limit: int, verify_written: bool
) -> ArchiveReport:
    """Copy ``snap`` from ``repo`` into ``to`` and commit it on ``to``'s ``main``."""
    control = control_store(to)
    forget_listings(control)
    refs = Refs(control, limit)
    if await _main_history(refs, snap, to) is None:
        return ArchiveReport(snap.step, 0, 0, 0)  # archived before: nothing to do
    marker = Lease(control, f"{INFLIGHT}{uuid.uuid4().hex}.json", {"archive": snap.step}, terms)
    await marker.write()
    objects = _Copier(repo.store, to, limit, verify_written)
    pieces = _Copier(repo.store, to, limit, verify_written)
    docs = _Copier(repo.store, control, limit, verify_written)  # as a commit writes them
    try:
        tree = repo.tree(snap)
        hashes = sorted(await tree.hashes())
        await together(*(objects.copy(object_key(h), h) for h in hashes))
        await _copy_pieces(pieces, tree)
        body = snap.to_bytes()
        await docs.copy(snapshot_key(snap.id), content_hash(body), body)
        await _commit(refs, snap, to)
    finally:
        await marker.release()
    return ArchiveReport(
        snap.step, objects.copied, objects.copied_bytes, objects.skipped, objects.repaired
    )


async def _copy_pieces(copier: _Copier, tree: Tree) -> None:
    """Every piece the tree names (one built in memory, from a schema-1 base, as held)."""
    jobs = []
    for refs in tree.nodes.values():
        for ref in refs:
            held = tree.loader.unsaved.get(ref.hash)
            jobs.append(copier.copy(piece_key(ref.hash), ref.hash, held[1] if held else None))
    await together(*jobs)


async def _main_history(refs: Refs, snap: Snapshot, to: Store) -> list[Ref] | None:
    """``to``'s main, or None when it names ``snap`` already; a different checkpoint of
    its step there raises ``CheckpointExistsError``."""
    history = await refs.history("main")
    if any(r.snapshot == snap.id for r in history):
        return None
    if any(r.step == snap.step for r in history):
        raise CheckpointExistsError(
            f"{to!r} already holds a different checkpoint of step {snap.step}"
        )
    return history


async def _commit(refs: Refs, snap: Snapshot, to: Store) -> None:
    """A version of ``to``'s main naming ``snap`` (unless one does by now)."""
    for _ in range(ATTEMPTS):
        history = await _main_history(refs, snap, to)
        if history is None:
            return
        if await refs.advance("main", history[-1] if history else None, snap) is not None:
            return
    raise CheckpointExistsError(f"{to!r}: main kept moving while archiving step {snap.step}")
