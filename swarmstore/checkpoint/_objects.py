"""Content-addressed objects: storing them once each, and which ones a store really holds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore._together import together
from swarmstore.checkpoint._docs import LocalFiles, inline_io, small_inline
from swarmstore.checkpoint._manifest import OBJECTS, content_hash, is_metadata_key, object_key

if TYPE_CHECKING:
    from collections.abc import Collection

    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

__all__ = ["ObjectWriter", "existing", "meta_text"]

#: Past this many hashes one listing of ``objects/`` is cheaper than a probe per object
#: (an S3 listing returns 1,000 keys per request).
LIST_ABOVE = 1024


async def existing(store: Store, hashes: Collection[str], limit: int) -> set[str]:
    """The subset of ``hashes`` whose objects are present in ``store``.

    A parent checkpoint's object list is a claim, not a fact: an object may have been
    lost since (a deleted file, a failed disk). A save reuses only what this confirms
    and rewrites the rest from the bytes it has in hand.
    """
    wanted = set(hashes)
    if not wanted:
        return set()
    if len(wanted) > LIST_ABOVE:
        found = set()
        async for key in store.list_prefix(OBJECTS):
            digest = key[len(OBJECTS) :].replace("/", "", 1)
            if digest in wanted:
                found.add(digest)
        return found
    sem = asyncio.Semaphore(limit)

    async def probe(digest: str) -> str | None:
        async with sem:
            return digest if await store.exists(object_key(digest)) else None

    return {d for d in await together(*map(probe, wanted)) if d is not None}


def meta_text(key: str, value: Buffer) -> str | None:
    """The text of a zarr metadata document (kept inline), or None for anything else."""
    if not is_metadata_key(key):
        return None
    try:
        return value.to_bytes().decode()
    except UnicodeDecodeError:
        return None  # not text: stored as an object like any other value


class ObjectWriter:
    """Stores encoded chunks under their xxh3-128, once each, and counts what it did.

    ``known`` holds hashes whose objects are present already (confirmed by
    :func:`existing`); a hash this writer stored is not stored again, even by
    concurrent writers of the same bytes. Over a ``LocalStore`` the files are written
    by :class:`~swarmstore.checkpoint._docs.LocalFiles` (the same protocol, cheaper):
    small ones on the event loop, larger ones on a worker thread, concurrently.
    """

    def __init__(self, store: Store, known: Collection[str] = ()) -> None:
        self.store, self.known = store, known
        self._files = LocalFiles(store) if inline_io(store) else None  # type: ignore[arg-type]
        self._written: set[str] = set()
        self.written_objects = self.written_bytes = self.reused_objects = self.hashed_bytes = 0

    def _plan(self, value: Buffer) -> tuple[str, int, bool]:
        data = value.as_buffer_like()
        digest, size = content_hash(data), len(value)
        self.hashed_bytes += size
        fresh = bool(size) and digest not in self.known and digest not in self._written
        if fresh:
            self._written.add(digest)  # concurrent writers of the same bytes write once
        elif size:
            self.reused_objects += 1
        return digest, size, fresh

    async def put(self, value: Buffer) -> tuple[str, int]:
        digest, size, fresh = self._plan(value)
        if fresh:
            try:
                if self._files is None:
                    await self.store.set(object_key(digest), value)
                elif small_inline(self.store, size):  # cheaper than the thread hop
                    self._files.put(object_key(digest), value.as_buffer_like())
                else:
                    await asyncio.to_thread(
                        self._files.put, object_key(digest), value.as_buffer_like()
                    )
            except BaseException:
                self._written.discard(digest)
                raise
            self.written_objects += 1
            self.written_bytes += size
        return digest, size

    def put_sync(self, value: Buffer) -> tuple[str, int]:
        digest, size, fresh = self._plan(value)
        if fresh:
            try:
                if self._files is not None:
                    self._files.put(object_key(digest), value.as_buffer_like())
                else:
                    self.store.set_sync(object_key(digest), value)  # type: ignore[attr-defined]
            except BaseException:
                self._written.discard(digest)
                raise
            self.written_objects += 1
            self.written_bytes += size
        return digest, size

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_written": set()}
