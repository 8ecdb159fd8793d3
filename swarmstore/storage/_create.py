"""``set_if_not_exists``: of racing writers exactly one wins, and once any racer returns, a
read returns the winner's value (never absent).

- Phase 1 on every target (as for a write). A live value there (newer than every
  tombstone seen) means "exists": confirmed before returning (below). Stale copies older
  than a tombstone are converged away first.
- Otherwise each node's atomic conditional create (``os.link``, S3 ``If-None-Match: *``, a
  dict check) is tried in rendezvous order until the first definitive answer: racers meet
  at the same first node, so one of them goes on while the others see "exists"; the
  survivor then creates on the remaining targets at once. With a majority of creations it
  wins; if that is not every target it re-stamps its value with an ordinary versioned put,
  so a crashed loser's leftover creation can never outrank it.
- A racer short of a majority withdraws only its own creations (same version and writer
  id) and backs off: a split vote resolves.
- "Exists" is confirmed by reading every target's version: the newest value must be held
  by a write quorum (:func:`settlement`), so every read after the create returns the same
  value. Live values that disagree, the newest short of a quorum (a write that failed
  below its quorum), are converged first; a lone value held by fewer (a crashed racer's
  leftover) is waited for, then, past ``storage.create-patience``, adopted
  by re-stamping it (an ordinary put of the same bytes), so a crashed racer never blocks
  the key.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Literal

from swarmstore import _clock, _events
from swarmstore.errors import QuorumError
from swarmstore.storage._converge import converge
from swarmstore.storage._integrity import Record
from swarmstore.storage._patience import send
from swarmstore.storage._verified import fetch
from swarmstore.storage._write import abort_late, put, stage, versions

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node, Pending, State

__all__ = ["create", "settlement"]

_ATTEMPTS = 16


def _name(node: Node) -> str:
    return node.name


async def create(store: Coordinator, key: str, data: bytes) -> None:
    """Write ``data`` under ``key`` unless it exists (see the module docstring)."""
    targets = store.targets(key)
    rq, w = store.quorums(len(targets))
    w = max(w, len(targets) // 2 + 1)  # at most one racer can gather a majority
    base = Record.of(data, store.min_block)
    patience = _clock.monotonic() + store.create_patience
    for attempt in range(_ATTEMPTS):
        staged, failures, late = await stage(store, key, data, targets)
        abort_late(store, late)  # a creation never lands late
        trusted = [p.seen for p in staged.values() if p.seen.corrupt is None]
        ready = {n: staged[n] for n in targets if n in staged and staged[n].error is None}
        if len(trusted) < rq or len(ready) < w:
            await _abort(ready)
            raise store._quorum_error(key, "create", len(ready), w, failures)
        floor = max((v for s in trusted if (v := s.tomb_version) is not None), default=None)
        if any(s.has_data and not _newer(s.data_version, floor) for s in trusted):
            await _abort(ready)
            await converge(store, key)  # copies older than a tombstone: clear them first
            continue
        if any(s.has_data for s in trusted):
            await _abort(ready)
            if await _settled(store, key, targets, w, patience):
                return
            await _backoff(attempt)
            continue
        version = store.next_version(key, versions(trusted))
        created, existed = await _walk(store, key, ready, base.stamped(version))
        if len(created) >= w:
            if len(created) < len(targets):
                await _restamp(store, key, data, base)
            return
        await _withdraw(store, key, created, version)
        if not existed:  # short of a majority with nobody else in the way: failures
            raise store._quorum_error(key, "create", len(created), w, failures)
        if await _settled(store, key, targets, w, patience):
            return
        await _backoff(attempt)
    _events.emit("quorum-missed", {"key": key, "op": "create", "acked": 0, "needed": w})
    raise QuorumError(key, 0, w, {"*": "conditional create kept colliding"})


def _newer(v: Version | None, floor: Version | None) -> bool:
    return v is not None and (floor is None or v > floor)


async def _abort(ready: dict[Node, Pending]) -> None:
    await asyncio.gather(*(n.abort(p) for n, p in ready.items()), return_exceptions=True)


async def _walk(
    store: Coordinator, key: str, ready: dict[Node, Pending], record: Record
) -> tuple[list[Node], list[Node]]:
    """Create on the first node that answers definitively, then (if we got it) the rest."""
    created: list[Node] = []
    existed: list[Node] = []
    order = list(ready)
    while order:
        node = order.pop(0)
        outcome = await _create_on(store, node, ready[node], record)
        if outcome == "written":
            created.append(node)
            break
        if outcome == "exists":
            existed.append(node)
            await _abort({n: ready[n] for n in order})
            return created, existed
    outcomes = await asyncio.gather(*(_create_on(store, n, ready[n], record) for n in order))
    for n, outcome in zip(order, outcomes, strict=True):
        (created if outcome == "written" else existed if outcome == "exists" else []).append(n)
    return created, existed


async def _create_on(store: Coordinator, node: Node, pending: Pending, record: Record) -> str:
    try:
        return await send(store, node, lambda n: n.commit(pending, record, create=True))
    except Exception as e:
        store._reraise_bugs([e])
        store._spawn(node.abort(pending))  # in the background: the node may be frozen
        return "failed"


async def _withdraw(store: Coordinator, key: str, created: list[Node], version: Version) -> None:
    """Take back this racer's own creations (never anyone else's: the version says whose)."""
    results = await asyncio.gather(
        *(store.router.send(n, lambda n: n.remove(key, version), name=_name) for n in created),
        return_exceptions=True,
    )
    store._reraise_bugs(results)


async def _restamp(store: Coordinator, key: str, data: bytes, base: Record) -> None:
    try:
        await put(store, key, data, base)
    except QuorumError:
        pass  # the creation holds a majority; hints and repair finish the rest


Step = Literal["absent", "settled", "converge", "wait"]


def settlement(states: list[State], w: int) -> Step:
    """What a create that found data does next, decided from its targets' states.

    - "absent": nothing live (every value is older than a tombstone): create again;
    - "settled": the *newest* live version is held by ``w`` targets, so every later read
      returns it: answer "exists";
    - "converge": the live versions disagree and the newest is short of a quorum (a write
      that failed below its quorum, or one still landing). Reads may return either until
      it is finished; answering "exists" now would let a later repair surface the newer
      value after reads returned the older (found by the state machine). Converging
      gives the newest to every target first, so what reads return from then on is fixed;
    - "wait": one version, short of a quorum (a racer's creation still landing).
    """
    floor = max((v for s in states if (v := s.tomb_version) is not None), default=None)
    live = [s.data_version for s in states if s.has_data and _newer(s.data_version, floor)]
    if not live:
        return "absent"
    newest = max(v for v in live if v is not None)
    if live.count(newest) >= w:
        return "settled"
    if len(set(live)) > 1:
        return "converge"
    return "wait"


async def _settled(
    store: Coordinator, key: str, targets: list[Node], w: int, patience: float
) -> bool:
    """Wait until the newest value is held by ``w`` targets (True), or none is left
    (False); see :func:`settlement`."""
    for attempt in range(_ATTEMPTS):
        states = await _states(store, key, targets)
        step = settlement(states, w)
        if step != "wait":
            if step == "converge":
                if attempt:  # a copy failed last time (a full disk): do not spin
                    await _backoff(attempt)
                await converge(store, key)
                continue
            return step == "settled"
        if _clock.monotonic() > patience:
            live = [s for s in states if s.has_data]
            await _adopt(store, key, targets, max(live, key=lambda s: s.data_version or (-2, 0)))
        else:
            await _backoff(attempt)
    return False


async def _states(store: Coordinator, key: str, targets: list[Node]) -> list[State]:
    results = await asyncio.gather(
        *(store.router.send(n, lambda n: n.state(key, tomb=True), name=_name) for n in targets),
        return_exceptions=True,
    )
    store._reraise_bugs(results)
    return [r for r in results if not isinstance(r, BaseException) and r.corrupt is None]


async def _adopt(store: Coordinator, key: str, targets: list[Node], best: State) -> None:
    """A value short of a quorum for too long (its writer crashed): re-stamp it."""
    holders = [n for n in targets]
    src, got, _ = await store._fetch(holders, lambda n: fetch(n, key, None, store.min_block), key)
    if src is None or got is None or got.record.version != best.data_version:
        return
    try:
        await put(store, key, got.data, got.record)
    except QuorumError:
        pass


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, min(0.2, 0.004 * 2**attempt)))
