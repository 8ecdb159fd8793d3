"""Hinted handoff: record which nodes missed a write, and bring them up to date.

A write or delete that did not reach every target leaves a hint on each node that did
(``.swarmstore/h/...``, see :mod:`swarmstore.storage._hints`) and in the coordinator's
local cache. Replaying a hint never copies blindly: it converges the key (the newest
trustworthy version wins, see :mod:`swarmstore.storage._converge`), so a hint can never
turn into a delete of an acknowledged value, and a hint for a node that caught up some
other way is simply dropped.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from swarmstore import _events
from swarmstore.network import qos
from swarmstore.storage._coded_maint import converge_coded
from swarmstore.storage._converge import converge
from swarmstore.storage._hints import Hint, hint_body, hint_name, parse_hint
from swarmstore.storage._patience import bounded, send

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node

__all__ = ["note_missed", "replay"]


def _name(node: Node) -> str:
    return node.name


async def note_missed(
    store: Coordinator, key: str, missed: list[Node], acked: list[Node], version: Version
) -> None:
    """Leave hints for ``missed`` on every acknowledging node (durable, seen by every host)
    and in the local cache; forget local hints the write made obsolete."""
    for n in acked:
        store.hints.discard(n.name, key)
        if store.hints.pending(n.name) and n.name not in store._replaying:
            store._spawn(replay(store, [n.name]))  # it answers again: catch it up
    if not missed or not acked:
        return
    holders = tuple(n.name for n in acked)
    for n in missed:
        store.hints.add(Hint(n.name, key, version, holders))
    puts = [
        send(store, a, lambda a, m=m, body=body: a.meta_put(hint_name(m.name, key), body))
        for m in missed
        for a in acked
        if (body := hint_body(Hint(m.name, key, version)))
    ]
    results = await asyncio.gather(*puts, return_exceptions=True)
    store._reraise_bugs(results)  # node errors: the local cache and repair still cover it


async def _found_on_nodes(store: Coordinator) -> tuple[list[Hint], list[str]]:
    """Every hint in the nodes' metadata areas (one listing per node), and unreachable nodes."""

    async def one(node: Node) -> list[Hint]:
        names = await send(store, node, lambda n: n.meta_list("h"))
        bodies = await asyncio.gather(*(bounded(store, node, node.meta_get(nm)) for nm in names))
        return [h for b in bodies if (h := parse_hint(b, node.name)) is not None]

    results = await asyncio.gather(*(one(n) for n in store.nodes), return_exceptions=True)
    store._reraise_bugs(results)
    found = [h for r in results if not isinstance(r, BaseException) for h in r]
    down = [
        n.name for n, r in zip(store.nodes, results, strict=True) if isinstance(r, BaseException)
    ]
    return found, down


async def replay(store: Coordinator, nodes: list[str] | None = None, *, scan: bool = False) -> int:
    """Replay hints (this coordinator's, or with ``scan=True`` every node's); returns how
    many were applied. Hints whose node is still behind (down) are kept."""
    names = set(store.hints.nodes() if nodes is None else nodes) - store._replaying
    store._replaying |= names
    try:
        hints = [h for nm in names for h in store.hints.pending(nm).values()]
        if scan:
            found, _ = await _found_on_nodes(store)
            hints += found
        with qos("bulk"):
            per_node = await _apply(store, hints)
    finally:
        store._replaying -= names
    done = sum(per_node.values())
    store.hints_replayed += done
    for node, replayed in sorted(per_node.items()):  # one event per node, as metrics.md says
        pending = len(store.hints.pending(node))
        _events.emit("hints-replayed", {"node": node, "replayed": replayed, "pending": pending})
    return done


async def _apply(store: Coordinator, hints: list[Hint]) -> dict[str, int]:
    """Apply ``hints``; how many were applied (and dropped) per node."""
    merged: dict[tuple[str, str], Hint] = {}
    for h in hints:
        if h.node not in store._by_name:
            continue
        had = merged.get((h.node, h.key))
        holders = tuple(dict.fromkeys([*(had.holders if had else ()), *h.holders]))
        merged[(h.node, h.key)] = Hint(h.node, h.key, h.version, holders)
    by_key: dict[str, list[Hint]] = {}
    for h in merged.values():
        by_key.setdefault(h.key, []).append(h)
    sem = asyncio.Semaphore(8)
    done: dict[str, int] = {}

    async def one(key: str, group: list[Hint]) -> None:
        async with sem:
            coded = store.coding_for(key) is not None  # erasure-coded: rebuild fragments
            out = await (converge_coded if coded else converge)(store, key)
        current = {n.name for n in out.current}
        if out.winner is None:
            current = set()
        for h in group:
            if h.node in current or store._by_name[h.node] not in store.targets(key):
                await _forget(store, h)
                done[h.node] = done.get(h.node, 0) + 1

    await asyncio.gather(*(one(k, g) for k, g in by_key.items()))
    return done


async def _forget(store: Coordinator, hint: Hint) -> None:
    """Drop a replayed hint: the local cache entry and its durable copies."""
    already = store.hints.has(hint.node, hint.key)
    store.hints.discard(hint.node, hint.key)
    name = hint_name(hint.node, hint.key)
    holders = [store._by_name[h] for h in hint.holders if h in store._by_name]
    if not holders and not already:
        return
    await asyncio.gather(
        *(store.router.send(n, lambda n: n.meta_delete(name), name=_name) for n in holders),
        return_exceptions=True,
    )
