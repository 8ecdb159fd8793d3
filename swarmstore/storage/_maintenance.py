"""Scrub, repair and rebalance for a ReplicatedStore.

All three walk the union of keys over reachable nodes (one listing per node, which also
says which node holds which key), run in the bulk QoS lane, report progress through a
``progress(done, total)`` callable and return a summary dataclass.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore.errors import ChecksumMismatch
from swarmstore.network import qos
from swarmstore.storage._integrity import Record

if TYPE_CHECKING:
    from swarmstore.storage._node import Node
    from swarmstore.storage._replicated import ReplicatedStore

__all__ = ["RebalanceReport", "RepairReport", "ScrubReport", "rebalance", "repair", "scrub"]

Progress = Callable[[int, int], None] | None
_CONCURRENCY = 8


@dataclass
class ScrubReport:
    """What a scrub found. ``ok`` is True when every key has ``replicas`` healthy copies."""

    keys: int = 0
    replicas_checked: int = 0
    healthy: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)
    unrecorded: list[tuple[str, str]] = field(default_factory=list)
    misplaced: list[tuple[str, str]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.stale or self.unreachable)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class RepairReport:
    """What a repair did: copies written, unrecorded values adopted, keys it could not save."""

    keys: int = 0
    copies_written: int = 0
    adopted: int = 0
    hints_replayed: int = 0
    unrecoverable: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RebalanceReport:
    """What a rebalance moved. ``complete`` is False when stopped early (resume by rerunning)."""

    keys: int = 0
    copied: int = 0
    deleted: int = 0
    skipped: int = 0
    resumed_after: str | None = None
    complete: bool = True
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def inventory(store: ReplicatedStore) -> tuple[dict[str, set[Node]], list[str]]:
    """``{key: nodes listing it}`` over reachable nodes, and the names of unreachable ones."""
    results = await asyncio.gather(
        *(n.list_prefix("") for n in store.nodes), return_exceptions=True
    )
    holders: dict[str, set[Node]] = {}
    unreachable = []
    for node, keys in zip(store.nodes, results, strict=True):
        if isinstance(keys, BaseException):
            if not isinstance(keys, OSError):
                raise keys
            unreachable.append(node.name)
            continue
        for k in keys:
            holders.setdefault(k, set()).add(node)
    return holders, unreachable


async def _examine(
    store: ReplicatedStore, node: Node, key: str
) -> tuple[str, bytes | None, Record | None]:
    """Read and verify one replica: ``("ok"|"unrecorded"|"missing"|"corrupt"|"down", ...)``.

    Through the router, so the traffic takes a lane of the ambient (bulk) QoS class.
    """
    try:
        got = await store.router.send(node, lambda n: n.read(key), name=_name)
    except ChecksumMismatch:
        return "corrupt", None, None
    except OSError:
        return "down", None, None
    if got is None:
        return "missing", None, None
    data, record, _ = got
    if record is None:
        return "unrecorded", data, None
    try:
        record.verify(data, what=key)
    except ChecksumMismatch:
        return "corrupt", None, record
    return "ok", data, record


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


async def scrub(store: ReplicatedStore, progress: Progress = None) -> ScrubReport:
    """Read and verify every replica of every key; change nothing."""
    report = ScrubReport()
    with qos("bulk"):
        holders, report.unreachable = await inventory(store)
        report.keys = len(holders)

        async def check(key: str) -> None:
            targets = store.targets(key)
            nodes = list(dict.fromkeys([*targets, *holders[key]]))
            results = await asyncio.gather(*(_examine(store, n, key) for n in nodes))
            newest = max((r.version for _, _, r in results if r is not None), default=0)
            for node, (state, _, record) in zip(nodes, results, strict=True):
                if node.name in report.unreachable or state == "down":
                    continue
                report.replicas_checked += state != "missing"
                entry = (key, node.name)
                if node not in targets:
                    if state != "missing":
                        report.misplaced.append(entry)
                elif state == "ok" and record is not None and record.version < newest:
                    report.stale.append(entry)
                elif state == "ok":
                    report.healthy += 1
                else:
                    getattr(report, state).append(entry)

        await _walk(sorted(holders), check, progress)
    for name in ("corrupt", "missing", "stale", "unrecorded", "misplaced"):
        getattr(report, name).sort()
    return report


def _best(results: list[tuple[Node, tuple[str, bytes | None, Record | None]]]) -> Any:
    """The copy to spread: the newest verified one, else the value unrecorded copies agree on."""
    verified = [(r, d) for _, (s, d, r) in results if s == "ok" and r is not None]
    if verified:
        record, data = max(verified, key=lambda x: x[0].version)
        return data, record, False
    unrecorded = [d for _, (s, d, _) in results if s == "unrecorded" and d is not None]
    if unrecorded and all(d == unrecorded[0] for d in unrecorded):
        return unrecorded[0], None, True
    return None, None, False


async def repair(store: ReplicatedStore, progress: Progress = None) -> RepairReport:
    """Give every key ``replicas`` verified, current copies on its target nodes."""
    report = RepairReport()
    with qos("bulk"):
        report.hints_replayed = await store.replay_hints()
        holders, report.unreachable = await inventory(store)
        report.keys = len(holders)

        async def fix(key: str) -> None:
            targets = store.targets(key)
            nodes = list(dict.fromkeys([*targets, *holders[key]]))
            results = list(
                zip(
                    nodes,
                    await asyncio.gather(*(_examine(store, n, key) for n in nodes)),
                    strict=False,
                )
            )
            data, record, adopt = _best(results)
            if data is None:
                report.unrecoverable.append(key)
                return
            record = record or Record.of(data, store.min_block)
            report.adopted += adopt
            for node, (state, _, rec) in results:
                if node not in targets or state == "down":
                    continue
                if state == "ok" and rec is not None and rec.same_content(record):
                    continue
                try:
                    await _write(store, node, key, data, record)
                    report.copies_written += 1
                except OSError:
                    continue

        await _walk(sorted(holders), fix, progress)
    report.unrecoverable.sort()
    return report


async def _write(store: ReplicatedStore, node: Node, key: str, data: bytes, record: Record) -> None:
    await store.router.send(
        node, lambda n: n.write(key, data, record), name=_name, nbytes=len(data)
    )


def _name(node: Node) -> str:
    return node.name


def _journal_path(store: ReplicatedStore) -> Any:
    members = "\0".join(f"{n.name}|{n.weight}|{n.zone}" for n in store.nodes)
    ident = xxhash.xxh3_64_hexdigest(f"{members}|{store.replicas}".encode())
    return store.hints.directory / f"rebalance-{ident}.json"


async def rebalance(
    store: ReplicatedStore, progress: Progress = None, *, limit: int | None = None
) -> RebalanceReport:
    """Copy each key to the nodes placement now names, then drop copies elsewhere.

    Keys are walked in sorted order and a journal records the last key finished, so a
    rerun after an interruption (or a ``limit``) resumes where it stopped. A copy is only
    deleted once every target holds a verified copy.
    """
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


async def _move(store: ReplicatedStore, key: str, held: set[Node], report: RebalanceReport) -> None:
    targets = store.targets(key)
    unreachable = set(report.unreachable)
    if any(n.name in unreachable for n in targets):
        report.skipped += 1
        return
    results = {n: await _examine(store, n, key) for n in dict.fromkeys([*targets, *held])}
    data, record, _ = _best(list(results.items()))
    if data is None:
        report.skipped += 1
        return
    record = record or Record.of(data, store.min_block)
    for node in targets:
        state, _, rec = results[node]
        if state == "ok" and rec is not None and rec.same_content(record):
            continue
        await _write(store, node, key, data, record)
        report.copied += 1
    for node in held - set(targets):
        await store.router.send(node, lambda n: n.delete(key), name=_name)
        report.deleted += 1
