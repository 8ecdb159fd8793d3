"""Listing and prefix deletes over the nodes of a ReplicatedStore.

A listing is the union over the reachable nodes. A key that some of its answering
targets list and others do not (a delete one of them missed, a write one of them
missed) is confirmed by a quorum version lookup before it is listed, so a deleted key
does not come back through a listing; a healthy store needs no such lookup.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore._together import together
from swarmstore.errors import QuorumError, ReplicaUnavailable
from swarmstore.storage._node import check_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node

__all__ = ["Listed", "delete_dir", "entries", "keys", "listed"]

_CONCURRENCY = 32


async def listed(store: Coordinator, prefix: str) -> tuple[dict[str, set[Node]], list[Node]]:
    """``{key: nodes listing it}`` under ``prefix`` and the nodes that did not answer."""
    results = await asyncio.gather(
        *(n.list_keys(prefix) for n in store.nodes), return_exceptions=True
    )
    store._reraise_bugs(results)
    holders: dict[str, set[Node]] = {}
    down = []
    for node, got in zip(store.nodes, results, strict=True):
        if isinstance(got, BaseException):
            down.append(node)
            continue
        for k in got:
            holders.setdefault(k, set()).add(node)
    if len(down) == len(store.nodes):
        raise ReplicaUnavailable(
            prefix, {n.name: _why(r) for n, r in zip(store.nodes, results, strict=True)}
        )
    return holders, down


def _why(r: object) -> str:
    return f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else "ok"


async def keys(store: Coordinator, prefix: str) -> list[str]:
    """The live keys under ``prefix``, sorted."""
    holders, down = await listed(store, prefix)
    answering = set(store.nodes) - set(down)
    doubtful = [k for k, held in holders.items() if not (set(store.targets(k)) & answering) <= held]
    sem = asyncio.Semaphore(_CONCURRENCY)

    async def live(key: str) -> bool:
        async with sem:
            try:
                return await store.exists(key)
            except ReplicaUnavailable:
                return True  # cannot prove it gone: list it, a read will say more

    verdicts = await together(*(live(k) for k in doubtful))
    gone = {k for k, ok in zip(doubtful, verdicts, strict=True) if not ok}
    return sorted(k for k in holders if k not in gone)


async def entries(store: Coordinator, prefix: str) -> list[str]:
    """Names directly under ``prefix`` (the union over the reachable nodes)."""
    results = await asyncio.gather(
        *(n.list_entries(prefix) for n in store.nodes), return_exceptions=True
    )
    store._reraise_bugs(results)
    ok = [r for r in results if not isinstance(r, BaseException)]
    if not ok:
        raise ReplicaUnavailable(
            prefix, {n.name: _why(r) for n, r in zip(store.nodes, results, strict=True)}
        )
    return sorted(set().union(*ok))


async def delete_dir(store: Coordinator, prefix: str) -> None:
    """Delete every key under ``prefix`` (each a versioned delete), then drop the empty
    directories left on local nodes. Raises the first :class:`QuorumError` after trying all."""
    lead = f"{prefix}/" if prefix else ""
    holders, _ = await listed(store, lead)
    sem = asyncio.Semaphore(_CONCURRENCY)

    async def one(key: str) -> BaseException | None:
        async with sem:
            try:
                await store.delete(key)
            except QuorumError as e:
                return e
            return None

    errors = [e for e in await together(*(one(k) for k in sorted(holders))) if e]
    await asyncio.gather(*(n.prune(lead) for n in store.nodes), return_exceptions=True)
    if errors:
        raise errors[0]


class Listed:
    """ReplicatedStore's listing and prefix deletes (zarr's ``list*``, ``delete_dir``,
    ``clear``), over the functions above."""

    _check_writable: Any
    _ensure_open: Any

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        self._check_writable()
        check_key(prefix, prefix=True)
        await self._ensure_open()
        await delete_dir(self, prefix.rstrip("/"))

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        await self._ensure_open()
        await delete_dir(self, "")

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in await keys(self, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await keys(self, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await entries(self, prefix):
            yield key
