"""Scrub, repair and rebalance for a ReplicatedStore.

All three walk the union of keys over the reachable nodes (one listing per node, which
also says which node holds which key) plus the keys with tombstones, run in the bulk QoS
lane, report progress through a ``progress(done, total)`` callable and return a summary
dataclass. A node that does not answer is reported in ``unreachable`` and the walk goes
on with the others; a copy that could not be written is reported, never counted as done.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore.network import qos
from swarmstore.storage._coded_maint import (
    converge_coded,
    move_coded,
    parked_shadows,
    scrub_coded,
)
from swarmstore.storage._converge import (
    Winner,
    _copy,
    converge,
    decide,
    examine,
    gone,
    passed_over,
)
from swarmstore.storage._fragments import refuse_fragment
from swarmstore.storage._patience import bounded
from swarmstore.storage._shadows import shadow_name

if TYPE_CHECKING:
    from swarmstore.storage._converge import Look
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node

__all__ = [
    "RebalanceReport",
    "RepairReport",
    "ScrubReport",
    "inventory",
    "rebalance",
    "repair",
    "scrub",
]

Progress = Callable[[int, int], None] | None
_CONCURRENCY = 8


@dataclass
class ScrubReport:
    """What a scrub found. ``ok`` is True when every key has ``replicas`` healthy copies.

    ``stale`` holds replicas older than the key's newest version, including values older
    than a tombstone (a delete they missed); ``tombstones`` lists deleted keys whose
    tombstones are still held (not yet applied everywhere): information, not damage.
    """

    keys: int = 0
    replicas_checked: int = 0
    healthy: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)
    unrecorded: list[tuple[str, str]] = field(default_factory=list)
    misplaced: list[tuple[str, str]] = field(default_factory=list)
    unrecoverable: list[str] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.corrupt or self.missing or self.stale or self.unreachable or self.unrecoverable
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class RepairReport:
    """What a repair did: copies written, unrecorded values adopted, keys it could not save.

    ``failed`` lists each copy it could not write as ``(key, node, why)`` (a directory in
    the way, a full disk, a node that stopped answering); ``ok`` is False when anything
    stayed broken.
    """

    keys: int = 0
    copies_written: int = 0
    adopted: int = 0
    hints_replayed: int = 0
    tombstones_collected: int = 0
    unrecoverable: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unrecoverable or self.failed or self.unreachable)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class RebalanceReport:
    """What a rebalance moved. ``complete`` is False when stopped early (resume by rerunning)."""

    keys: int = 0
    copied: int = 0
    deleted: int = 0
    skipped: int = 0
    resumed_after: str | None = None
    complete: bool = True
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def inventory(store: Coordinator) -> tuple[dict[str, set[Node]], list[str]]:
    """``{key: nodes holding data or a tombstone}`` over reachable nodes, and the names of
    the unreachable ones."""

    async def one(node: Node) -> tuple[list[str], list[str]]:
        return await bounded(store, node, node.list_keys("")), await bounded(
            store, node, node.tombstones()
        )

    results = await asyncio.gather(*(one(n) for n in store.nodes), return_exceptions=True)
    store._reraise_bugs(results)
    holders: dict[str, set[Node]] = {}
    unreachable = []
    for node, got in zip(store.nodes, results, strict=True):
        if isinstance(got, BaseException):
            unreachable.append(node.name)
            continue
        for k in (*got[0], *got[1]):
            holders.setdefault(k, set()).add(node)
    return holders, unreachable


async def _walk(keys: list[str], fn: Callable[[str], Awaitable[None]], progress: Progress) -> None:
    sem = asyncio.Semaphore(_CONCURRENCY)
    done = 0

    async def one(key: str) -> None:
        nonlocal done
        async with sem:
            await fn(key)
        done += 1
        if progress is not None:
            progress(done, len(keys))

    await asyncio.gather(*(one(k) for k in keys))


async def scrub(store: Coordinator, progress: Progress = None) -> ScrubReport:
    """Read and verify every replica of every key; change nothing."""
    report = ScrubReport()
    with qos("bulk"):
        holders, report.unreachable = await inventory(store)
        report.keys = len(holders)

        async def check(key: str) -> None:
            if store.coding_for(key) is not None:  # erasure-coded: its fragments
                return await scrub_coded(store, key, holders[key], report)
            targets = store.targets(key)
            nodes = list(dict.fromkeys([*targets, *holders[key]]))
            looks = await asyncio.gather(*(examine(store, n, key) for n in nodes))
            for lk in looks:
                refuse_fragment(key, lk)
            looks, _ = passed_over(list(looks), set(targets), store.write_quorum)
            _classify(report, key, looks, set(targets), decide(looks))

        await _walk(sorted(holders), check, progress)
    for name in ("corrupt", "missing", "stale", "unrecorded", "misplaced", "tombstones"):
        getattr(report, name).sort()
    report.unrecoverable.sort()
    return report


def _classify(
    report: ScrubReport, key: str, looks: Any, targets: set[Node], win: Winner | None
) -> None:
    if win is None and not gone(looks):
        report.unrecoverable.append(key)
    deleted = win is not None and win.deleted
    if deleted:
        report.tombstones.append(key)
    for lk in looks:
        if lk.kind == "down":
            continue
        entry = (key, lk.node.name)
        report.replicas_checked += lk.kind != "missing"
        if lk.node not in targets:
            if lk.kind != "missing":
                (report.stale if deleted else report.misplaced).append(entry)
        elif lk.kind == "corrupt":
            report.corrupt.append(entry)
        elif deleted and lk.kind in ("ok", "unrecorded"):
            report.stale.append(entry)
        elif deleted:
            report.healthy += 1
        elif lk.kind == "missing":
            report.missing.append(entry)
        elif lk.kind == "unrecorded":
            report.unrecorded.append(entry)
        elif win is not None and lk.record != win.record:
            report.stale.append(entry)
        else:
            report.healthy += 1


async def repair(store: Coordinator, progress: Progress = None) -> RepairReport:
    """Give every key ``replicas`` verified, current copies on its target nodes; apply
    every delete a node missed and drop tombstones once everyone applied them."""
    report = RepairReport()
    with qos("bulk"):
        report.hints_replayed = await store.replay_hints(scan=True)
        holders, report.unreachable = await inventory(store)
        report.keys = len(holders)
        coded = {k for k in holders if store.coding_for(k) is not None}  # erasure-coded
        parked = await parked_shadows(store) if coded else set()  # killed writers' shadows

        async def fix(key: str) -> None:
            targets = set(store.targets(key))
            extra = tuple(n for n in holders[key] if n not in targets)
            if key in coded:
                out = await converge_coded(store, key, extra, parked=shadow_name(key) in parked)
            else:
                out = await converge(store, key, extra)
            if out.winner is None:
                if not out.gone:
                    report.unrecoverable.append(key)
                return
            report.copies_written += len(out.written)
            report.adopted += out.winner.adopted
            report.tombstones_collected += out.collected
            for node, why in out.failed:
                if node.name not in report.unreachable:
                    report.failed.append((key, node.name, why))

        await _walk(sorted(holders), fix, progress)
    report.unrecoverable.sort()
    report.failed.sort()
    return report


def _journal_path(store: Coordinator) -> Any:
    members = "\0".join(f"{n.name}|{n.weight}|{n.zone}" for n in store.nodes)
    ident = xxhash.xxh3_64_hexdigest(f"{members}|{store.replicas}".encode())
    return store.hints.directory / f"rebalance-{ident}.json"


async def rebalance(
    store: Coordinator, progress: Progress = None, *, limit: int | None = None
) -> RebalanceReport:
    """Copy each key to the nodes placement now names, then drop copies elsewhere.

    Keys are walked in sorted order and a journal records the last key finished, so a
    rerun after an interruption (or a ``limit``) resumes where it stopped. A copy is only
    deleted once every target holds the key's newest verified version.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"rebalance limit must be a non-negative integer, got {limit!r}")
    report = RebalanceReport()
    journal = _journal_path(store)
    cursor = None
    if journal.exists():
        cursor = json.loads(journal.read_text()).get("cursor")
        report.resumed_after = cursor
    with qos("bulk"):
        holders, report.unreachable = await inventory(store)
        keys = [k for k in sorted(holders) if cursor is None or k > cursor]
        if limit is not None and limit < len(keys):
            keys, report.complete = keys[:limit], False
        for i, key in enumerate(keys):
            await _move(store, key, holders[key], report)
            report.keys += 1
            if progress is not None:
                progress(i + 1, len(keys))
            if (i + 1) % 64 == 0 or i + 1 == len(keys):
                _save_cursor(journal, key)
    if report.complete and not report.unreachable:
        journal.unlink(missing_ok=True)
    return report


def _save_cursor(journal: Any, key: str) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cursor": key}))
    os.replace(tmp, journal)


async def _move(store: Coordinator, key: str, held: set[Node], report: RebalanceReport) -> None:
    targets = store.targets(key)
    if any(n.name in report.unreachable for n in targets):
        report.skipped += 1
        return
    if store.coding_for(key) is not None:  # erasure-coded: move fragments
        return await move_coded(store, key, held, report)
    nodes = list(dict.fromkeys([*targets, *held]))
    looks: list[Look] = list(await asyncio.gather(*(examine(store, n, key) for n in nodes)))
    for lk in looks:
        refuse_fragment(key, lk)
    looks, passed = passed_over(looks, set(targets), store.write_quorum)
    win = decide(looks)
    if win is None or win.deleted or passed:
        if win is not None:  # converge buries, or rewrites above the passed-over version
            await converge(store, key, tuple(held))
        report.skipped += 1
        return
    by_node = {lk.node: lk for lk in looks}
    for node in targets:
        lk = by_node[node]
        if lk.kind == "ok" and lk.record == win.record:
            continue
        try:
            await _copy(store, node, key, win)
            report.copied += 1
        except OSError as e:
            report.failed.append((key, node.name, f"{type(e).__name__}: {e}"))
            return
    for node in held - set(targets):
        await store.router.send(node, lambda n: n.remove(key), name=lambda n: n.name)
        report.deleted += 1
