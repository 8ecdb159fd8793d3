"""Read repair: a read that found replicas behind (older, missing, unrecorded, corrupt)
brings them up to date in the background, in the bulk QoS lane."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from swarmstore import _events
from swarmstore.network import qos
from swarmstore.storage._converge import Winner, _copy, converge

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node
    from swarmstore.storage._read import Answer, Verdict

__all__ = ["after_read"]


def _behind(answer: Answer, verdict: Verdict) -> bool:
    if verdict.got is not None:
        if answer.kind == "data":
            return answer.record is not None and answer.record.version < verdict.got.record.version
        return answer.kind in ("absent", "unrecorded", "corrupt")
    if verdict.deleted_by is not None:
        return answer.kind in ("data", "unrecorded", "corrupt")
    return False


def after_read(store: Coordinator, key: str, verdict: Verdict, *, full: bool) -> None:
    """Spawn the repair of the target replicas ``verdict``'s answers found behind."""
    answers = verdict.answers or {}
    targets = store.targets(key)
    bad = [n for n in targets if n in answers and _behind(answers[n], verdict)]
    if not bad or key in store._repairing:
        return
    _events.emit("read-repair", {"key": key, "nodes": {n.name: answers[n].kind for n in bad}})
    store._repairing.add(key)
    store._spawn(_repair(store, key, bad, verdict, full))


async def _repair(
    store: Coordinator, key: str, bad: list[Node], verdict: Verdict, full: bool
) -> None:
    try:
        with qos("bulk"):
            if verdict.got is not None and full:
                win = Winner(verdict.got.record, verdict.got.data)
                results = await asyncio.gather(
                    *(_copy(store, n, key, win) for n in bad), return_exceptions=True
                )
                store._reraise_bugs(results)
            else:  # a range, or a delete: converge (it also collects the tombstones)
                await converge(store, key)
    finally:
        store._repairing.discard(key)
