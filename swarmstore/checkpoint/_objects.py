"""Which content-addressed objects a store really holds (before a save trusts a parent)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from swarmstore.checkpoint._manifest import OBJECTS, object_key

if TYPE_CHECKING:
    from collections.abc import Collection

    from zarr.abc.store import Store

__all__ = ["existing"]

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

    return {d for d in await asyncio.gather(*map(probe, wanted)) if d is not None}
