"""Per-key locks within one process: the compare and the swap of one key on one node, one
coroutine at a time, for backends whose own compare-and-swap does not cover every step
(a generic store has none; obstore has no conditional delete)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["exclusive"]

#: per (event loop, node name, key): the lock and how many hold or wait for it
_LOCKS: dict[tuple[int, str, str], list[Any]] = {}


@contextlib.asynccontextmanager
async def exclusive(node: str, key: str) -> AsyncIterator[None]:
    """Hold ``key``'s lock on the node named ``node`` (every node object of that name
    shares it: several stores, one node). The lock goes when its last user leaves."""
    slot = (id(asyncio.get_running_loop()), node, key)
    entry = _LOCKS.setdefault(slot, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if not entry[1]:
            del _LOCKS[slot]
