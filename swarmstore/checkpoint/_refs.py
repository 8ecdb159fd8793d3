"""Branches and tags: small create-only refs, moved by one conditional put.

Version ``n + 1`` of a branch can only be created by one writer (``put_if_absent``), and
only a writer that read version ``n`` as the tip tries to: that is the compare-and-swap.
The tip is the highest version listed. Retention deletes old versions, but never the
newest :data:`KEEP_VERSIONS`, so a writer whose save outlived that many commits could
create a version number that existed before (a "ghost", below the tip): after each
create the writer checks that no later version exists that was not built on it, and
withdraws a ghost as a conflict. Tags are created once and never move.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from swarmstore import _clock
from swarmstore._together import together
from swarmstore.checkpoint._commit import put_if_absent
from swarmstore.checkpoint._docs import delete_doc, get_doc, list_keys
from swarmstore.checkpoint._snapshot import (
    REFS,
    Ref,
    branch_prefix,
    check_name,
    ref_key,
    tag_key,
    version_of,
)
from swarmstore.errors import CheckpointExistsError, ManifestError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.checkpoint._snapshot import Snapshot

__all__ = ["KEEP_VERSIONS", "Refs"]

logger = logging.getLogger(__name__)

_VERSION_NAME = re.compile(r"\d{20}\.json")

#: Newest versions of a branch retention never deletes (a ghost needs this many commits
#: to land, and be collected, while one save is in flight).
KEEP_VERSIONS = 64


class Refs:
    """Reads and moves the refs in ``store`` (the control store); caches immutable ones."""

    def __init__(self, store: Store, limit: int = 32) -> None:
        self.store, self.limit = store, limit
        self._cache: dict[str, Ref] = {}

    async def _read(self, key: str, kind: str) -> Ref | None:
        if key in self._cache:
            return self._cache[key]
        buf = await get_doc(self.store, key)
        if buf is None:
            return None
        ref = Ref.from_bytes(buf.to_bytes(), kind, where=key)
        self._cache[key] = ref
        return ref

    async def versions(self, branch: str) -> list[int]:
        """The versions of ``branch`` present now, oldest first."""
        keys = await list_keys(self.store, branch_prefix(branch))
        return sorted(v for k in keys if (v := version_of(k, branch)) is not None)

    async def history(self, branch: str) -> list[Ref]:
        """Every readable version of ``branch``, oldest first (damaged ones are skipped).

        Versions are immutable, so only those not read before are read: a session on a
        branch of thousands of commits costs one listing, not a task per version.
        """
        keys = [ref_key(branch, v) for v in await self.versions(branch)]
        sem = asyncio.Semaphore(self.limit)

        async def one(key: str) -> None:
            async with sem:
                try:
                    await self._read(key, "branch")
                except ManifestError as e:
                    logger.warning("Skipping a damaged ref: %s", e)

        await together(*(one(k) for k in keys if k not in self._cache))
        return [r for k in keys if (r := self._cache.get(k)) is not None]

    async def tip(self, branch: str) -> Ref | None:
        """The newest readable version of ``branch``, or None for a branch with none."""
        for version in reversed(await self.versions(branch)):
            try:
                ref = await self._read(ref_key(branch, version), "branch")
            except ManifestError as e:
                logger.warning("Skipping a damaged ref: %s", e)
                continue
            if ref is not None:
                return ref
        return None

    async def advance(self, branch: str, expected: Ref | None, snapshot: Snapshot) -> Ref | None:
        """Move ``branch`` from ``expected`` to ``snapshot``; None if someone moved it first."""
        ref = await self.create_next(branch, expected, snapshot)
        return ref if ref is not None and await self.confirm(ref) else None

    async def create_next(
        self, branch: str, expected: Ref | None, snapshot: Snapshot
    ) -> Ref | None:
        """Create the version after ``expected`` naming ``snapshot``; None if it exists.

        Not a commit until :meth:`confirm` says the version is not a ghost.
        """
        version = expected.version + 1 if expected else 0
        ref = Ref(
            "branch", branch, version, snapshot.id, snapshot.step, snapshot.parent, _clock.wall()
        )
        if not await put_if_absent(self.store, ref_key(branch, version), ref.to_bytes()):
            return None
        return ref

    async def confirm(self, ref: Ref) -> bool:
        """Whether the version ``ref`` created is on the branch: no later version exists
        that was not built on it (else it is a ghost, and is withdrawn)."""
        branch, version, key = ref.name, ref.version, ref_key(ref.name, ref.version)
        later = [v for v in await self.versions(branch) if v > version]
        if later:
            successor = await self._read(ref_key(branch, later[0]), "branch")
            if later[0] != version + 1 or successor is None or successor.parent != ref.snapshot:
                logger.warning("Withdrawing %s: the branch moved past it meanwhile", key)
                await delete_doc(self.store, key)
                return False
        self._cache[key] = ref
        return True

    async def _listed(self) -> list[str]:
        # the whole refs/ prefix: LocalStore lists by directory, not by name prefix
        return [k[len(REFS) :] for k in await list_keys(self.store, REFS)]

    async def branches(self) -> list[str]:
        """Names of every branch with at least one version."""
        names = set()
        for rest in await self._listed():
            head, _, tail = rest.partition("/")
            if head.startswith("branch.") and _VERSION_NAME.fullmatch(tail):
                names.add(head[len("branch.") :])
        return sorted(names)

    async def tags(self) -> dict[str, Ref]:
        """Every readable tag by name."""
        out = {}
        for rest in await self._listed():
            if not (rest.startswith("tag.") and rest.endswith(".json") and "/" not in rest):
                continue
            key, name = f"{REFS}{rest}", rest[len("tag.") : -len(".json")]
            try:
                ref = await self._read(key, "tag")
            except ManifestError as e:
                logger.warning("Skipping a damaged tag: %s", e)
                continue
            if ref is not None:
                out[name] = ref
        return out

    async def tag(self, name: str, target: Ref) -> Ref:
        """Create tag ``name`` at the snapshot ``target`` names; tags never move."""
        ref = Ref(
            "tag",
            check_name(name, "tag"),
            0,
            target.snapshot,
            target.step,
            target.parent,
            _clock.wall(),
        )
        if not await put_if_absent(self.store, tag_key(name), ref.to_bytes()):
            raise CheckpointExistsError(f"tag {name!r} exists; tags never move")
        return ref

    async def read_tag(self, name: str) -> Ref | None:
        return await self._read(tag_key(name), "tag")

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)
