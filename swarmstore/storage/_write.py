"""The write protocol: versioned puts and deletes with quorums, and conditional creates.

Every mutation first learns the key's versions from at least ``Rq`` of its targets
(phase 1: on a local node folded into ``prepare``, on S3 a HEAD), then writes at
``(max seen + 1, writer id)``; each node applies it only if it still holds what phase 1
saw or older (compare-and-swap), so a commit that lands late never regresses a newer
value. ``put`` returns once ``W`` replicas acknowledged; a laggard gets a bounded grace,
then becomes a hint while its attempt finishes or fails in the background. A write that
misses ``W`` raises :class:`QuorumError` and leaves each replica with the old value or the
new one, never "absent".

Deletes write a versioned tombstone on the targets (the tombstone first, then the older
data removed: a crash between the two leaves data the tombstone outranks, never a replica
with neither), and remove copies held elsewhere; once every node applied it the
tombstones are dropped again, so a healthy store's metadata area is empty.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore import _clock, _events
from swarmstore.storage._handoff import note_missed
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import StaleCommit, State, acknowledged

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node, Pending

__all__ = ["delete", "put", "settle", "stage", "versions"]


def _name(node: Node) -> str:
    return node.name


def _ok(result: object) -> bool:
    return not isinstance(result, BaseException)


async def settle(
    store: Coordinator,
    jobs: dict[Node, Coroutine[Any, Any, Any]],
    enough: Callable[[dict[Node, Any]], bool],
) -> tuple[dict[Node, Any], dict[Node, asyncio.Task[Any]]]:
    """Run ``jobs`` at once; return when all are done, or a grace after ``enough(results)``,
    or ``storage.node-timeout`` after the start when ``enough`` waits on a job that never
    answers (a frozen node: without the timeout the write waited for ever).

    Results are values or exceptions. Jobs still running (laggards) are returned and keep
    running (held by the store, not waited for by ``flush``); a caller short of its quorum
    counts them as timed out (:func:`unanswered`). Bugs are re-raised.
    """
    tasks = {n: asyncio.ensure_future(c) for n, c in jobs.items()}
    results: dict[Node, Any] = {}
    pending, t0 = set(tasks.values()), _clock.monotonic()
    end = t0 + store.node_timeout  # until enough answered; then the grace's end
    graced = False
    while pending:
        timeout = max(0.0, end - _clock.monotonic())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
        for n, t in tasks.items():
            if t in done:
                results[n] = t.exception() or t.result()
        if not graced and enough(results):
            graced = True
            end = min(end, _clock.monotonic() + store.grace(_clock.monotonic() - t0))
        if _clock.monotonic() >= end:
            break
    store._reraise_bugs(results.values())
    laggards = {n: t for n, t in tasks.items() if not t.done()}
    for t in laggards.values():
        store._hold(t)
    return results, laggards


def unanswered(late: Iterable[Node], within: str) -> dict[Node, BaseException]:
    """Failures for nodes whose requests were still running when the write went on."""
    return {n: TimeoutError(f"{n.name}: no answer within the {within}") for n in late}


def decided(jobs: int, w: int) -> Callable[[dict[Node, Any]], bool]:
    """``settle``'s test for ``jobs`` commits: ``w`` acknowledged, or ``w`` out of reach
    (then waiting on a hung one only delays the fresh start a stale write makes)."""

    def test(results: dict[Node, Any]) -> bool:
        ok = sum(_ok(r) for r in results.values())
        return ok >= w or jobs - (len(results) - ok) < w

    return test


def versions(states: Iterable[State]) -> list[Version]:
    return [v for s in states if s.corrupt is None and (v := s.version) is not None]


async def stage(
    store: Coordinator, key: str, data: bytes, targets: list[Node]
) -> tuple[dict[Node, Pending], dict[Node, BaseException], dict[Node, asyncio.Task[Any]]]:
    """Phase 1 and staging on every target; returns once enough answered (or all did):
    ``(staged, failures, late)``, ``late`` the prepares still running."""
    rq, w = store.quorums(len(targets))

    def enough(results: dict[Node, Any]) -> bool:
        answers = [p for p in results.values() if _ok(p)]
        trusted = sum(p.seen.corrupt is None for p in answers)
        return trusted >= rq and sum(p.error is None for p in answers) >= w

    jobs = {
        n: store.router.send(n, lambda n: n.prepare(key, data), name=_name, nbytes=len(data))
        for n in targets
    }
    results, late = await settle(store, jobs, enough)
    staged = {n: p for n, p in results.items() if _ok(p)}
    failures = {n: e for n, e in results.items() if not _ok(e)}
    failures |= unanswered(late, "write grace or storage.node-timeout")
    failures |= {n: p.error for n, p in staged.items() if p.error is not None}
    return staged, failures, late


def abort_late(store: Coordinator, late: dict[Node, asyncio.Task[Any]]) -> None:
    """Drop what late prepares stage when they land (the write went on without them)."""
    for node, task in late.items():
        task.add_done_callback(lambda t, n=node: _abort_landed(store, n, t))


def _abort_landed(store: Coordinator, node: Node, task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    store._spawn(node.abort(task.result()))


async def put(
    store: Coordinator, key: str, data: bytes, record: Record | None, *, again: bool = True
) -> list[Node]:
    """Write ``data`` to ``key``'s replicas; returns the nodes that acknowledged. Short of
    ``W`` because commits went stale (:func:`stale`), it starts over once (``again``)."""
    targets = store.targets(key)
    rq, w = store.quorums(len(targets))
    base = record or Record.of(data, store.min_block)
    staged, failures, late = await stage(store, key, data, targets)
    trusted = [p.seen for p in staged.values() if p.seen.corrupt is None]
    ready = {n: p for n, p in staged.items() if p.error is None}
    if len(trusted) < rq or len(ready) < w:
        abort_late(store, late)
        await asyncio.gather(*(n.abort(p) for n, p in ready.items()), return_exceptions=True)
        raise store._quorum_error(key, "set", len(ready), w, failures)
    stamped = base.stamped(store.next_version(key, versions(trusted)))
    acked, more, lagging = await commit(store, key, ready, stamped, late)
    failures |= more
    missed = [n for n in targets if n not in acked and n not in lagging]
    await note_missed(store, key, missed, acked, stamped.version)
    if lagging:
        store._spawn(_follow(store, key, stamped.version, acked, lagging))
    if len(acked) < w:
        if again and stale(failures):
            return await put(store, key, data, record, again=False)
        failures |= unanswered(lagging, "storage.node-timeout")
        raise store._quorum_error(key, "set", len(acked), w, failures)
    return acked


def stale(failures: dict[Node, BaseException]) -> bool:
    """Whether some commits failed only because a delete was collected between the write's
    phases: starting over, with a fresh phase 1, is a new write after that delete."""
    return any(isinstance(e, StaleCommit) for e in failures.values())


async def _late_commit(
    store: Coordinator, node: Node, prepared: asyncio.Task[Any], record: Record
) -> Any:
    pending = await prepared
    if pending.error is not None:
        raise pending.error
    return await commit_on(store, node, pending, record)


async def commit_on(store: Coordinator, node: Node, pending: Pending, record: Record) -> Any:
    """One replica's commit, as a write quorum counts it: a commit whose phase-1 view is
    gone raises :class:`~swarmstore.storage._node.StaleCommit` (it stored nothing)."""
    out = await store.router.send(node, lambda n: n.commit(pending, record), name=_name)
    return acknowledged(out, node, pending.key)


async def _follow(
    store: Coordinator,
    key: str,
    version: Version,
    acked: list[Node],
    lagging: dict[Node, asyncio.Future[Any]],
) -> None:
    """Laggards get ``storage.write-grace`` more; those that fail or still run then get
    durable hints (one that lands later drops its own)."""
    done, _ = await asyncio.wait(lagging.values(), timeout=store._grace_cap)
    missed = [n for n, t in lagging.items() if t not in done or t.exception() is not None]
    for n, t in lagging.items():
        if t not in done:
            t.add_done_callback(lambda t, n=n: store._late_outcome(n, key, version, t))
    await note_missed(store, key, missed, acked, version)


async def commit(
    store: Coordinator,
    key: str,
    ready: dict[Node, Pending],
    record: Record,
    late: dict[Node, asyncio.Task[Any]] | None = None,
) -> tuple[list[Node], dict[Node, BaseException], dict[Node, asyncio.Future[Any]]]:
    """Commit staged writes; returns (acknowledged, failed, still running) once ``W``
    acknowledged plus a grace, or all answered.

    ``late``: prepares still running; each commits when it lands (compare-and-swap) and
    counts towards ``W`` like the others, so a commit that hangs never holds a write that
    a late replica acknowledges (found by the state machine on a saturated machine).
    """
    w = store.quorums(len(store.targets(key)))[1]
    jobs = {n: commit_on(store, n, p, record) for n, p in ready.items()}
    for n, t in (late or {}).items():
        jobs[n] = _late_commit(store, n, t, record)
    results, laggards = await settle(store, jobs, decided(len(jobs), w))
    acked = [n for n, r in results.items() if _ok(r)]
    failures = {n: r for n, r in results.items() if not _ok(r)}
    return acked, failures, dict(laggards)


async def delete(store: Coordinator, key: str) -> None:
    """Delete ``key``: a no-op when a read quorum holds no data; else versioned tombstones."""
    targets, rest = store._ranked(key)
    rq, w = store.quorums(len(targets))

    def enough(results: dict[Node, Any]) -> bool:
        return sum(_ok(s) and s.corrupt is None for s in results.values()) >= rq

    # with tombstones: data a newer tombstone outranks (a delete left halfway) must not set
    # the version, or this delete's tombstone could rank below the one already there
    jobs = {n: store.router.send(n, lambda n: n.state(key, tomb=True), name=_name) for n in targets}
    seen, _late = await settle(store, jobs, enough)  # a late node is buried below anyway
    states = {n: s for n, s in seen.items() if _ok(s)}
    failures = {n: e for n, e in seen.items() if not _ok(e)}
    trusted = [s for s in states.values() if s.corrupt is None]
    if len(trusted) < rq:
        raise store._quorum_error(key, "delete", len(trusted), rq, failures)
    if not any(s.size is not None for s in states.values()) and await _clean(store, key, rest):
        return  # nothing to delete on a read quorum, nor elsewhere: zarr's fill-value deletes
    tomb = Record.tombstone(store.next_version(key, versions(trusted)))
    jobs = {n: _bury(store, n, key, tomb, states.get(n)) for n in targets}
    results, laggards = await settle(store, jobs, lambda r: sum(map(_ok, r.values())) >= w)
    acked = [n for n, r in results.items() if _ok(r)]
    failures = {n: r for n, r in results.items() if not _ok(r)}
    missed = [n for n in targets if n not in acked and n not in laggards]
    await note_missed(store, key, missed, acked, tomb.version)
    if laggards:
        store._spawn(_follow(store, key, tomb.version, acked, dict(laggards)))
    cleaned = await _clean(store, key, rest)
    if len(acked) < w:
        failures |= unanswered(laggards, "storage.node-timeout")
        raise store._quorum_error(key, "delete", len(acked), w, failures)
    if len(acked) == len(targets) and cleaned and not laggards:
        store._spawn(_collect(store, key, targets, tomb))


def _bury(
    store: Coordinator, node: Node, key: str, tomb: Record, seen: State | None
) -> Coroutine[Any, Any, Any]:
    seen = seen if seen is not None else State(tomb_known=False)
    return store.router.send(node, lambda n: n.bury(key, tomb, seen), name=_name)


async def _clean(store: Coordinator, key: str, rest: Iterable[Node]) -> bool:
    """Remove copies of ``key`` outside its targets; True when every node answered."""
    results = await asyncio.gather(
        *(store.router.send(n, lambda n: n.remove(key), name=_name) for n in rest),
        return_exceptions=True,
    )
    store._reraise_bugs(results)
    return all(map(_ok, results))


async def _collect(store: Coordinator, key: str, targets: list[Node], tomb: Record) -> None:
    """Every node applied the delete: drop its tombstones (the metadata area empties)."""
    await asyncio.gather(
        *(store.router.send(n, lambda n: n.unbury(key, tomb), name=_name) for n in targets),
        return_exceptions=True,
    )


def grace(elapsed: float, cap: float) -> float:
    """How long laggards get once a quorum answered: four times what the quorum took, at
    least 100 ms (a remote node is slower than a local quorum), at most ``cap``
    (``storage.write-grace``, default 1 s): a frozen node costs a write at most that."""
    return min(cap, max(0.1, 4 * elapsed))


def emit_missed(key: str, op: str, acked: int, needed: int, failures: dict[str, str]) -> None:
    _events.emit(
        "quorum-missed",
        {"key": key, "op": op, "acked": acked, "needed": needed, "failures": failures},
    )
