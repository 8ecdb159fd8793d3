"""Maintenance of erasure-coded keys: converge (repair, hints, read repair), scrub,
rebalance and conversion between replicated and coded, one key at a time.

:func:`examine` (shared with replicas) reads and verifies each node's fragment and its
tombstone; :func:`decide_coded` picks the newest version that ``k`` fragments (or one whole
copy) of one version decode, checked against the value's length and xxh3, or a tombstone
newer than it. :func:`converge_coded` then gives target ``i`` fragment ``i`` of that
version (rebuilt by re-encoding the decoded value with the code that wrote it) by the
nodes' compare-and-swap with ``heal`` (a same-version fragment at the wrong index, corrupt,
or a whole copy being converted), so a repair racing a newer write never regresses it.
A newer version seen on fewer than ``k`` nodes (a write that never completed) is left
alone: it cannot be decoded, and compare-and-swap keeps those nodes as they are.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore.network import qos
from swarmstore.storage._converge import Look, Outcome, Winner, examine, gone
from swarmstore.storage._fragments import codec, fragments_of
from swarmstore.storage._node import State
from swarmstore.storage._patience import send
from swarmstore.storage._shadows import backed, drop_shadows, read_shadows

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Node

__all__ = [
    "CodedWinner",
    "classify_coded",
    "converge_coded",
    "decide_coded",
    "looks_of",
    "move_coded",
    "parked_shadows",
    "scrub_coded",
]


def _name(node: Node) -> str:
    return node.name


@dataclass
class CodedWinner:
    """The newest trustworthy version: a value (``data`` with one fragment ``record`` of
    it, or a whole copy's) or a tombstone (``tomb``)."""

    version: Version
    data: bytes | None = None
    record: Record | None = None
    tomb: Record | None = None


def _decoded(group: list[Look]) -> tuple[bytes, Record] | None:
    whole = [lk for lk in group if lk.record is not None and lk.record.fragment is None]
    if whole and whole[0].data is not None and whole[0].record is not None:
        return whole[0].data, whole[0].record
    by_index = {lk.record.fragment.index: lk for lk in group if lk.record and lk.record.fragment}
    if not by_index:
        return None
    first = next(iter(by_index.values())).record
    assert first is not None and first.fragment is not None
    f = first.fragment
    if len(by_index) < f.k:
        return None
    pieces = {i: lk.data for i, lk in by_index.items() if lk.data is not None}
    value = codec(f.k, f.m, f.codec).decode(pieces, f.length, f.digest)
    if len(value) != f.length or xxhash.xxh3_64_intdigest(value) != f.digest:
        return None
    return value, first


def decide_coded(looks: list[Look]) -> CodedWinner | None:
    """The newest decodable version or a newer tombstone; None when nothing decodes."""
    groups: dict[Version, list[Look]] = {}
    for lk in looks:
        if lk.kind == "ok" and lk.record is not None:
            groups.setdefault(lk.record.version, []).append(lk)
    tomb = max(
        (t for lk in looks if (t := lk.tomb) is not None), key=lambda t: t.version, default=None
    )
    for version in sorted(groups, reverse=True):
        got = _decoded(groups[version])
        if got is None:
            continue  # a write that never completed (fewer than k fragments)
        if tomb is not None and tomb.version > version:
            break
        return CodedWinner(version, got[0], got[1])
    if tomb is not None:
        return CodedWinner(tomb.version, tomb=tomb)
    return None


async def looks_of(store: Coordinator, key: str, nodes: list[Node]) -> list[Look]:
    return list(await asyncio.gather(*(examine(store, n, key) for n in nodes)))


async def converge_coded(
    store: Coordinator, key: str, extra: tuple[Node, ...] = (), *, parked: bool = False
) -> Outcome:
    """Give target ``i`` of ``key`` fragment ``i`` of the newest decodable version (or
    apply the newest tombstone everywhere); ``extra``: other nodes holding copies.
    ``parked``: shadows are known to be left (a killed writer's): read, then drop them."""
    targets, rest = store._ranked(key)
    nodes = list(dict.fromkeys([*targets, *extra]))
    with qos("bulk"):
        looks = await looks_of(store, key, nodes)
        win = decide_coded(looks)
        shadows = parked or _behind_top(looks, win)
        stray: list[Version] = []  # shadows of a write that committed nothing: inert
        if shadows:  # the newest seen does not decode: a killed writer's shadows may
            committed = {lk.record.version for lk in looks if lk.kind == "ok" and lk.record}
            raw = await read_shadows(store, key, list(targets))
            found = backed(raw, committed)
            stray = [g.record.version for n, g in raw.items() if n not in found]
            parked = [Look(n, "ok", None, g.record, g.data, why="shadow") for n, g in found.items()]
            win = decide_coded(looks + parked)
        if win is None:
            return Outcome(gone=gone(looks))
        upto = max([win.version, *stray])  # the shadows repair drops once it is done
        if win.tomb is not None:
            looks += await looks_of(store, key, [n for n in rest if n not in nodes])
            return await _bury_all(store, key, looks, win.tomb, set(targets), upto)
        assert win.data is not None and win.record is not None
        wanted = _wanted(store, key, win, len(targets))
        out = Outcome(Winner(win.record.stamped(win.version), win.data))
        by_node = {lk.node: lk for lk in looks}
        await asyncio.gather(
            *(_fix(store, key, by_node[t], wanted[i], out) for i, t in enumerate(targets))
        )
        if shadows and not out.failed:
            await drop_shadows(store, key, list(targets), upto)
    return out


async def parked_shadows(store: Coordinator) -> set[str]:
    """The shadow names any reachable node holds (one listing per node)."""
    results = await asyncio.gather(
        *(send(store, n, lambda n: n.meta_list("s")) for n in store.nodes),
        return_exceptions=True,
    )
    store._reraise_bugs(results)
    return {name for r in results if not isinstance(r, BaseException) for name in r}


def _behind_top(looks: list[Look], win: CodedWinner | None) -> bool:
    """Whether some node holds a version newer than the winner (one that does not decode)."""
    top = max((lk.record.version for lk in looks if lk.kind == "ok" and lk.record), default=None)
    return top is not None and (win is None or top > win.version)


def _wanted(store: Coordinator, key: str, win: CodedWinner, n: int) -> list[tuple[bytes, Record]]:
    """What each target should hold at the winning version: fragment ``i`` under the key's
    code now, or (a replicated key) the whole value."""
    from swarmstore.storage._integrity import Record

    assert win.data is not None and win.record is not None
    coding = store.coding_for(key)
    if coding is None:
        return [(win.data, Record.of(win.data, store.min_block, win.version))] * n
    f = win.record.fragment
    same = f is not None and (f.k, f.m) == (coding.k, coding.m)
    name = f.codec if same and f is not None else None  # a changed code: the default
    pieces = fragments_of(coding.k, coding.m, win.data, store.min_block, name)
    return [(d, r.stamped(win.version)) for d, r in pieces]


async def _fix(
    store: Coordinator, key: str, lk: Look, want: tuple[bytes, Record], out: Outcome
) -> None:
    data, record = want
    if lk.kind == "down":
        out.failed.append((lk.node, lk.why or "unreachable"))
        return
    if lk.kind == "ok" and lk.record == record:
        out.current.add(lk.node)
        return

    async def write(n: Node) -> None:
        pending = await n.prepare(key, data)
        if pending.error is not None:
            raise pending.error
        await n.commit(pending, record, heal=True)

    await out.apply(store, lk.node, store.router.send(lk.node, write, name=_name, nbytes=len(data)))


async def _bury_all(
    store: Coordinator,
    key: str,
    looks: list[Look],
    tomb: Record,
    targets: set[Node],
    upto: Version,
) -> Outcome:
    """The newest is a delete: tombstones on the targets, no data anywhere, then collect."""
    out = Outcome(Winner(tomb))

    async def one(lk: Look) -> None:
        if lk.kind == "down":
            out.failed.append((lk.node, lk.why or "unreachable"))
            return
        if lk.state is not None and lk.state.size is None:
            out.current.add(lk.node)
            return
        seen = lk.state if lk.state is not None else State(tomb_known=False)
        if lk.node in targets:
            step = store.router.send(lk.node, lambda n: n.bury(key, tomb, seen), name=_name)
        else:
            step = store.router.send(lk.node, lambda n: n.remove(key), name=_name)
        await out.apply(store, lk.node, step)

    await asyncio.gather(*(one(lk) for lk in looks))
    if not out.failed and all(lk.node in out.current for lk in looks):
        # shadows the delete outranks go before its tombstones: once those are collected,
        # nothing would tell a read or a repair that the shadows' value was deleted
        await drop_shadows(store, key, list(targets), upto)
        await asyncio.gather(
            *(store.router.send(n, lambda n: n.unbury(key, tomb), name=_name) for n in targets),
            return_exceptions=True,
        )
        out.collected = True
    return out


def classify_coded(report: Any, key: str, looks: list[Look], targets: list[Node]) -> None:
    """Scrub's verdict on one coded key's fragments (a :class:`ScrubReport`, in place):
    target ``i`` is healthy when it holds fragment ``i`` of the newest decodable version."""
    win = decide_coded(looks)
    if win is None:
        if not gone(looks):
            report.unrecoverable.append(key)
        return
    if win.tomb is not None:
        report.tombstones.append(key)
    index = {n: i for i, n in enumerate(targets)}
    for lk in looks:
        if lk.kind == "down":
            continue
        entry = (key, lk.node.name)
        report.replicas_checked += lk.kind != "missing"
        if lk.node not in index:
            if lk.kind != "missing":
                (report.stale if win.tomb is not None else report.misplaced).append(entry)
        elif lk.kind == "corrupt":
            report.corrupt.append(entry)
        elif win.tomb is not None:
            _tomb_entry(report, lk, entry)
        elif lk.kind == "missing":
            report.missing.append(entry)
        elif lk.kind == "unrecorded":
            report.unrecorded.append(entry)
        elif _holds(lk, win, index[lk.node]):
            report.healthy += 1
        else:
            report.stale.append(entry)


def _tomb_entry(report: Any, lk: Look, entry: tuple[str, str]) -> None:
    if lk.kind in ("ok", "unrecorded"):
        report.stale.append(entry)
    else:
        report.healthy += 1


def _holds(lk: Look, win: CodedWinner, i: int) -> bool:
    rec = lk.record
    if rec is None or rec.version != win.version:
        return False
    return rec.fragment is not None and rec.fragment.index == i


async def scrub_coded(store: Coordinator, key: str, holders: set[Node], report: Any) -> None:
    targets = store.targets(key)
    nodes = list(dict.fromkeys([*targets, *holders]))
    classify_coded(report, key, await looks_of(store, key, nodes), targets)


async def move_coded(store: Coordinator, key: str, held: set[Node], report: Any) -> None:
    """Rebalance one key whose copies may be fragments: converge onto its targets now,
    then drop copies elsewhere once every target is current (also converts the key
    between replicated and coded when the policy changed)."""
    targets = store.targets(key)
    out = await converge_coded(store, key, tuple(held))
    if out.winner is None or out.winner.deleted:
        report.skipped += 1
        return
    report.copied += len(out.written)
    for node, why in out.failed:
        report.failed.append((key, node.name, why))
    if out.failed or not all(t in out.current for t in targets):
        return
    for node in held - set(targets):
        await store.router.send(node, lambda n: n.remove(key), name=_name)
        report.deleted += 1
