"""Hinted handoff replay: bring a node that missed writes or deletes up to date.

The hints themselves live in :class:`~swarmstore.storage._hints.HintLog`; this applies them:
a missed write is copied from a verified replica elsewhere (or turned into a delete when
the key is gone everywhere), a missed delete is applied. It runs in the bulk QoS lane and
stops at the first node error, keeping the remaining hints for later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore import _events
from swarmstore.errors import ReplicaUnavailable
from swarmstore.network import qos
from swarmstore.storage._integrity import Record
from swarmstore.storage._verified import Missing, fetch_full

if TYPE_CHECKING:
    from swarmstore.storage._node import Node
    from swarmstore.storage._replicated import ReplicatedStore

__all__ = ["replay"]


def _name(node: Node) -> str:
    return node.name


async def replay(store: ReplicatedStore, node: Node) -> int:
    """Apply ``node``'s pending hints; returns how many were applied."""
    if node.name in store._replaying:
        return 0
    store._replaying.add(node.name)
    done = 0
    try:
        with qos("bulk"):
            for key, op in sorted(store.hints.pending(node.name).items()):
                try:
                    await _replay_one(store, node, key, op)
                except OSError:
                    break  # still down: keep the rest for later
                store.hints.discard(node.name, key)
                store.hints_replayed += 1
                done += 1
    finally:
        store._replaying.discard(node.name)
    if done:
        left = len(store.hints.pending(node.name))
        _events.emit("hints-replayed", {"node": node.name, "replayed": done, "pending": left})
    return done


async def _replay_one(store: ReplicatedStore, node: Node, key: str, op: str) -> None:
    send = store.router.send
    if op == "delete":
        await send(node, lambda n: n.delete(key), name=_name)
        return
    if op == "delete_dir":
        await send(node, lambda n: n.delete_dir(key), name=_name)
        return
    others = [n for n in store.nodes if n is not node and not store.hints.blocks_read(n.name, key)]
    src, full, failures = await store.router.fetch(others, lambda n: fetch_full(n, key), name=_name)
    if src is None:
        if all(isinstance(e, Missing) for e in failures.values()):
            await send(node, lambda n: n.delete(key), name=_name)  # deleted since
            return
        raise ReplicaUnavailable(key, {n.name: _why(e) for n, e in failures.items()})
    data, record = full
    record = record or Record.of(data, store.min_block)
    await send(node, lambda n: n.write(key, data, record), name=_name, nbytes=len(data))


def _why(e: BaseException) -> str:
    return "missing" if isinstance(e, Missing) else f"{type(e).__name__}: {e}"
