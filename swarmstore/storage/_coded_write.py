"""Writes of erasure-coded keys: today's staged, versioned protocol, one fragment per node.

The value is encoded into ``k + m`` fragments; target ``i`` (in rendezvous order) stages
fragment ``i`` in phase 1, which also learns its version. The write is stamped
``(max seen + 1, writer)`` and each fragment is committed with its own record (the
fragment's blocks, its index, the code, the value's length and xxh3) by the node's
compare-and-swap, once ``w`` nodes hold the fragments as shadows
(:mod:`swarmstore.storage._shadows`), dropped again when the write returns. It returns
once ``w`` fragments are published (:class:`Coding`: all ``k + m`` by default, so a
write that returned survives ``m`` later losses); fewer raise
:class:`~swarmstore.errors.QuorumError`. Laggards and missed fragments get hints (their
replay rebuilds the fragment) exactly as replicas do.

A write killed at any point leaves each node with its old fragment or its new one, and a
read decodes only ``k`` fragments of one version: before its commits the old value reads
on; once they began, whichever of old and new has ``k`` fragments (counting the shadows)
is read, never a mix (the new one only if no old is decodable or repair rolled it on).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore.storage._coded_maint import converge_coded
from swarmstore.storage._fragments import fragments_of
from swarmstore.storage._handoff import note_missed
from swarmstore.storage._shadows import drop_shadows, put_shadows
from swarmstore.storage._write import (
    _follow,
    _late_commit,
    abort_late,
    commit_on,
    decided,
    settle,
    stale,
    versions,
)

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._fragments import Coding
    from swarmstore.storage._integrity import Record
    from swarmstore.storage._node import Node, Pending, State

__all__ = ["encode", "put_coded"]

#: values above this size are encoded in a worker thread (the event loop keeps serving)
_THREAD_BYTES = 256 * 1024


def _name(node: Node) -> str:
    return node.name


def _ok(result: object) -> bool:
    return not isinstance(result, BaseException)


async def encode(coding: Coding, data: bytes, min_block: int) -> list[tuple[bytes, Record]]:
    """:func:`~swarmstore.storage._fragments.fragments_of`, large values in a thread."""
    if len(data) > _THREAD_BYTES:
        return await asyncio.to_thread(fragments_of, coding.k, coding.m, data, min_block)
    return fragments_of(coding.k, coding.m, data, min_block)


async def put_coded(
    store: Coordinator, key: str, data: bytes, coding: Coding, *, again: bool = True
) -> list[Node]:
    """Write ``data`` to ``key`` as fragments; returns the nodes that acknowledged (short
    of ``w`` for stale commits only, it starts over once, as :func:`~._write.put`)."""
    targets = store.targets(key)
    pieces = dict(zip(targets, await encode(coding, data, store.min_block), strict=True))
    staged, failures, late = await _stage(store, key, pieces, coding)
    trusted = [p.seen for p in staged.values() if p.seen.corrupt is None]
    ready = {n: p for n, p in staged.items() if p.error is None}
    if len(trusted) < coding.rq or len(ready) < coding.w:
        abort_late(store, late)
        await asyncio.gather(*(n.abort(p) for n, p in ready.items()), return_exceptions=True)
        raise store._quorum_error(key, "set", len(ready), coding.w, failures)
    if again and len(trusted) == len(targets) and unfinished(trusted, coding.k):
        abort_late(store, late)  # an unfinished write: finish it first, from its shadows
        await asyncio.gather(*(n.abort(p) for n, p in ready.items()), return_exceptions=True)
        if not await _finished(store, key, coding.k):
            raise store._quorum_error(key, "set", 0, coding.w, failures)
        return await put_coded(store, key, data, coding, again=False)
    version = store.next_version(key, versions(trusted))
    records = {n: rec.stamped(version) for n, (_, rec) in pieces.items()}
    parked, lost = await put_shadows(store, key, {n: (p, records[n]) for n, p in ready.items()})
    if len(parked) < coding.w:  # the old value is untouched: nothing was committed
        abort_late(store, late)
        await asyncio.gather(*(n.abort(p) for n, p in ready.items()), return_exceptions=True)
        raise store._quorum_error(key, "set", len(parked), coding.w, failures | lost)
    acked, more, lagging = await _commit(store, ready, records, coding.w)
    failures |= more
    for n, t in late.items():  # phase 1 came late: commit when it lands (compare-and-swap)
        lagging[n] = store._hold(asyncio.ensure_future(_late_commit(store, n, t, records[n])))
    missed = [n for n in targets if n not in acked and n not in lagging]
    await note_missed(store, key, missed, acked, version)
    if lagging:
        store._spawn(_follow(store, key, version, acked, lagging))
    if len(acked) < coding.w:
        if again and stale(failures):
            return await put_coded(store, key, data, coding, again=False)
        raise store._quorum_error(key, "set", len(acked), coding.w, failures)
    store._spawn(drop_shadows(store, key, parked, version))
    return acked


def unfinished(seen: list[State], k: int) -> bool:
    """Whether the newest version phase 1 saw is a coded write that committed fewer than
    ``k`` fragments (and no newer tombstone): a write that failed or died between its
    commits, decodable only from its shadows. A node holds one shadow per key, so this
    write's shadows would replace that one's; were this write to commit nothing, neither
    version would decode (found by the coded machine: two failed writes, then a repair
    found the key unrecoverable). So the writer finishes it first (repair rolls it forward
    from its shadows), as a Paxos proposer completes a value it finds accepted before
    proposing its own."""
    recs = [s.record for s in seen if s.record is not None]
    top = max((r.version for r in recs), default=None)
    tomb = max((s.tomb.version for s in seen if s.tomb is not None), default=None)
    if top is None or (tomb is not None and tomb > top):
        return False
    newest = [r for r in recs if r.version == top]
    if any(r.fragment is None for r in newest):
        return False  # a whole copy
    return len({r.fragment.index for r in newest if r.fragment is not None}) < k


async def _finished(store: Coordinator, key: str, k: int) -> bool:
    """Roll an unfinished write of ``key`` forward (repair); False only when it decodes
    but could not be committed on ``k`` nodes (its shadows must stay: this write fails,
    as its own would replace them). Nothing decodable (more than ``m`` lost): nothing to
    keep, True."""
    try:
        out = await converge_coded(store, key)
    except Exception as e:
        store._reraise_bugs([e])
        return False
    return out.winner is None or len(out.current) >= k


async def _stage(
    store: Coordinator, key: str, pieces: dict[Node, tuple[bytes, Record]], coding: Coding
) -> tuple[dict[Node, Pending], dict[Node, BaseException], dict[Node, asyncio.Task[Any]]]:
    def enough(results: dict[Node, Any]) -> bool:
        answers = [p for p in results.values() if _ok(p)]
        trusted = sum(p.seen.corrupt is None for p in answers)
        return trusted >= coding.rq and sum(p.error is None for p in answers) >= coding.w

    jobs = {
        n: store.router.send(n, lambda n, d=d: n.prepare(key, d), name=_name, nbytes=len(d))
        for n, (d, _) in pieces.items()
    }
    results, late = await settle(store, jobs, enough)
    staged = {n: p for n, p in results.items() if _ok(p)}
    failures = {n: e for n, e in results.items() if not _ok(e)}
    failures |= {n: TimeoutError(f"{n.name}: no answer within the write grace") for n in late}
    failures |= {n: p.error for n, p in staged.items() if p.error is not None}
    return staged, failures, late


async def _commit(
    store: Coordinator, ready: dict[Node, Pending], records: dict[Node, Record], w: int
) -> tuple[list[Node], dict[Node, BaseException], dict[Node, asyncio.Future[Any]]]:
    jobs = {n: commit_on(store, n, p, records[n]) for n, p in ready.items()}
    results, laggards = await settle(store, jobs, decided(len(jobs), w))
    acked = [n for n, r in results.items() if _ok(r)]
    failures = {n: r for n, r in results.items() if not _ok(r)}
    return acked, failures, dict(laggards)
