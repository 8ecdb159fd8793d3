"""Reads of erasure-coded keys: ``k`` verified fragments of one version, decoded.

A read asks the router's fastest ``k`` of the key's ``k + m`` nodes for their fragments
(each verified against its own record) and hedges with the ``(k+1)``-th when one is slow
(the write grace past the first answer) or fails. :func:`decide` then picks, from the
answers so far, the newest version held by ``k`` fragments (or one whole replicated
copy); it is returned only when no answer shows a newer version, at least ``rq`` nodes
answered (every write quorum meets them), and no tombstone outranks it.

A key is *absent* only when every node says so (the rest of the nodes too: fragments
placed before nodes joined, not yet moved), or every other node did and the silent ones
stayed silent past the grace. The quorum alone would let the
first ``rq`` absent answers decide, and with the default write-all quorum (``rq`` = 1) a
single node that lost its fragment -- a wiped disk, a deleted object, within the ``m``
losses the code is there to survive -- made a key that ``k`` other nodes hold read as
absent: a zarr chunk silently read as its fill value, a listing that dropped the key.

Versions never mix: fragments are grouped by version (and by the code their records name),
and only ``k`` fragments of one group are decoded; the decoded value is checked against
the logical length and xxh3 the records carry. A newer version seen on fewer than ``k``
nodes after every node answered is a write that never completed: an acknowledged one
left ``w`` fragments, and at most ``w - k`` losses leave ``k``. Fewer than ``k``
fragments of every version, even counting the shadows a killed writer may have left
(:mod:`swarmstore.storage._shadows`), and no tombstone: :class:`FragmentsUnavailable`,
naming each node's fragment state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import xxhash

from swarmstore import _clock, _events
from swarmstore.errors import FragmentsUnavailable
from swarmstore.storage._fragments import codec
from swarmstore.storage._node import State
from swarmstore.storage._read import Answer, from_error, from_state
from swarmstore.storage._shadows import backed, read_shadows
from swarmstore.storage._verified import Got, Missing, fetch, fetch_now

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._fragments import Coding
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Node

__all__ = ["CodedRead", "Decision", "decide"]


def _name(node: Node) -> str:
    return node.name


@dataclass
class Decision:
    """What the answers so far say: ``value`` (the winning version's answers), ``deleted``,
    ``absent``, or ``more`` (ask more nodes; ``tombs``: first learn the tombstones of the
    nodes that answered absent)."""

    verdict: str
    version: Version | None = None
    chosen: dict[Node, Answer] = field(default_factory=dict)
    tomb: Record | None = None


def _groups(answers: dict[Node, Answer]) -> dict[Version, dict[Node, Answer]]:
    """Data answers by version: fragments (one per index) and whole copies."""
    out: dict[Version, dict[Node, Answer]] = {}
    seen: set[tuple[Version, int]] = set()
    for node, a in answers.items():
        if a.kind != "data" or a.record is None:
            continue
        v, frag = a.record.version, a.record.fragment
        if frag is not None:
            if (v, frag.index) in seen:
                continue
            seen.add((v, frag.index))
        out.setdefault(v, {})[node] = a
    return out


def _decodable(group: dict[Node, Answer]) -> bool:
    recs = [a.record for a in group.values() if a.record is not None]
    if any(r.fragment is None for r in recs):
        return True  # a whole copy (replicated before conversion)
    return bool(recs) and len(recs) >= recs[0].fragment.k  # type: ignore[union-attr]


def decide(answers: dict[Node, Answer], coding: Coding, targets: frozenset[Node]) -> Decision:
    """The plain decision over the answers so far (see the module docstring)."""
    trusted = sum(a.trusted for n, a in answers.items() if n in targets)
    groups = _groups(answers)
    tomb = max((a.tomb for a in answers.values() if a.tomb), key=lambda t: t.version, default=None)
    top = max(groups, default=None)
    good = [v for v, g in groups.items() if _decodable(g)]
    best = max(good, default=None)
    if trusted < coding.rq or (top is not None and best != top):
        return Decision("more")
    if best is None:
        if tomb is not None:
            return Decision("deleted", tomb=tomb)
        return Decision("absent")
    if any(a.kind == "absent" and not a.tomb_known for n, a in answers.items() if n in targets):
        return Decision("tombs", best)
    if tomb is not None and tomb.version > best:
        return Decision("deleted", tomb=tomb)
    return Decision("value", best, groups[best])


def _final(answers: dict[Node, Answer], coding: Coding, targets: frozenset[Node]) -> Decision:
    """Every node answered, and the newest version has fewer than ``k`` fragments.

    It is passed over (a write that never completed) only when at least ``rq`` targets
    hold an *older* version: compare-and-swap never lets a node go back, so those never
    held it, and it cannot have reached ``w`` nodes. Otherwise (fragments wiped by more
    than ``m`` losses look exactly like this) the read fails rather than guess.
    """
    groups = _groups(answers)
    good = {v for v, g in groups.items() if _decodable(g)}
    best = max(good, default=None)
    tomb = max((a.tomb for a in answers.values() if a.tomb), key=lambda t: t.version, default=None)
    for v in groups:
        if (best is not None and v <= best) or (tomb is not None and tomb.version > v):
            continue
        older = sum(
            n in targets and a.kind == "data" and a.record is not None and a.record.version < v
            for n, a in answers.items()
        )
        if older < coding.rq:
            return Decision("more")
    trimmed = {
        n: a
        if a.kind != "data" or (a.record is not None and a.record.version in good)
        else Answer("absent", tomb_known=True, why="holds an incomplete version")
        for n, a in answers.items()
    }
    return decide(trimmed, coding, targets)


class CodedRead:
    """One read (``want_data``) or version lookup of an erasure-coded key."""

    def __init__(self, store: Coordinator, key: str, coding: Coding, want_data: bool) -> None:
        self.store, self.key, self.coding, self.want_data = store, key, coding, want_data
        targets, rest = store._ranked(key)
        hinted = store.hints.stale_nodes(key)
        order = getattr(store.router, "order", None)  # a custom router may not rank
        ranked = order(list(targets), _name) if order is not None else list(targets)
        self.order = [*sorted(ranked, key=lambda n: n.name in hinted), *rest]
        self.targets = frozenset(targets)
        self.answers: dict[Node, Answer] = {}
        self.running: dict[Node, asyncio.Task[Answer]] = {}
        self.t0 = _clock.monotonic()
        self.shadows_read = False

    async def run(self) -> tuple[Decision, bytes | None]:
        """The decision and, for a value read with ``want_data``, the decoded bytes."""
        if not await self._folded():
            self._launch(self.coding.k)
        stalled = False  # the last wait ended at its grace with no answer
        for _ in range(4 * len(self.order) + 8):
            d = decide(self.answers, self.coding, self.targets)
            if d.verdict == "absent" and (
                self._launch(len(self.order)) or (self.running and not stalled)
            ):
                d = Decision("more")  # absent once every node said so (module docstring)
            if d.verdict == "tombs":
                await self._tombs()
                continue
            if d.verdict == "more" and not self.running and not self._launch(1):
                d = await self._settle()
            if d.verdict != "more":
                return self._done(d)
            stalled = not await self._wait()
        raise self.unavailable()

    async def _settle(self) -> Decision:
        """Every node answered and no version decodes yet: learn the tombstones (a delete
        newer than every fragment), then read the shadows a killed writer left."""
        d = _final(self.answers, self.coding, self.targets)
        if d.verdict in ("more", "tombs"):
            await self._tombs()
            d = _final(self.answers, self.coding, self.targets)
        if d.verdict == "more" and not self.shadows_read:
            self.shadows_read = True
            nodes = [n for n in self.order if n in self.targets]
            committed = {a.record.version for a in self.answers.values() if a.record}
            found = backed(await read_shadows(self.store, self.key, nodes), committed)
            for node, got in found.items():
                self.answers[(node, "shadow")] = Answer("data", record=got.record, got=got)  # type: ignore[index]
            d = _final(self.answers, self.coding, self.targets)
        if d.verdict in ("more", "tombs"):
            raise self.unavailable()
        return d

    def _done(self, d: Decision) -> tuple[Decision, bytes | None]:
        for task in self.running.values():  # hedges that lost: finish unwatched
            self.store._hold(task)
        return d, self._decode(d) if d.verdict == "value" and self.want_data else None

    async def _folded(self) -> bool:
        """The first ``k`` fragments in one thread hop, when their nodes have a sync path
        (local directories, memory), as replicated reads fold their probes. Short of ``k``
        fragments there (a node down, a fragment missing: a degraded read), the other sync
        nodes in the same hop, in order, until ``k`` are in hand; when none of the first
        holds the key, all of them (absence needs every node's word: see the module
        docstring). With a fragment in hand, the nodes that answered absent are asked for
        their tombstones in the same hop too (a decision needs them: :func:`decide`)."""
        k = self.coding.k
        first = self.order[:k]
        if not self.want_data or not all(n.supports_sync and n in self.targets for n in first):
            return False
        rest = [n for n in self.order[k:] if n.supports_sync]
        key, block = self.key, self.store.min_block

        def work() -> list[tuple[Node, Got | BaseException]]:
            out = [(node, _fetched(node, key, block)) for node in first]
            held = sum(isinstance(got, Got) for _, got in out)
            for node in rest:
                if held >= k:
                    break
                got = _fetched(node, key, block)
                out.append((node, got))
                held += isinstance(got, Got)
            if held:
                out = [(n, _tombs_of(n, key) if isinstance(g, Missing) else g) for n, g in out]
            return out

        inline = all(getattr(n, "inline_sync", False) for n in (*first, *rest))
        for node, got in work() if inline else await asyncio.to_thread(work):
            if isinstance(got, Got):
                self.answers[node] = Answer("data", record=got.record, got=got)
            elif isinstance(got, State):
                self.answers[node] = _absent_with_tombs(got)
            else:
                self.answers[node] = from_error(got)
        return True

    def _launch(self, count: int) -> int:
        fresh = [n for n in self.order if n not in self.answers and n not in self.running]
        for node in fresh[:count]:
            self.running[node] = asyncio.ensure_future(self._ask(node))
        return len(fresh[:count])

    async def _wait(self) -> bool:
        """Until an answer lands (True); a grace past the first answer, hedge with one more
        (False: a node that does not answer within it never holds an absent read back)."""
        timeout = None if not self.answers else self.store.grace(_clock.monotonic() - self.t0)
        done, _ = await asyncio.wait(
            self.running.values(), timeout=timeout, return_when="FIRST_COMPLETED"
        )
        for node, task in list(self.running.items()):
            if task in done:
                del self.running[node]
                self.answers[node] = task.result()
        if not done:
            self._launch(1)
        return bool(done)

    async def _ask(self, node: Node) -> Answer:
        if not self.want_data:
            try:
                st = await self.store.router.send(
                    node, lambda n: n.state(self.key, tomb=False), name=_name
                )
            except Exception as e:
                self.store._reraise_bugs([e])
                return from_error(e)
            return from_state(st)
        key, block = self.key, self.store.min_block
        src, got, failures = await self.store._fetch(
            [node], lambda n: fetch(n, key, None, block), key
        )
        if src is not None and isinstance(got, Got):
            return Answer("data", record=got.record, got=got)
        e = failures.get(node)
        return from_error(e) if e is not None else Answer("down", why="no answer")

    async def _tombs(self) -> None:
        unknown = [
            n
            for n, a in self.answers.items()
            if a.kind == "absent" and not a.tomb_known and n in self.targets
        ]

        async def look(node: Node) -> None:
            try:
                st = await self.store.router.send(
                    node, lambda n: n.state(self.key, tomb=True), name=_name
                )
            except Exception as e:
                self.store._reraise_bugs([e])
                self.answers[node] = from_error(e)
                return
            self.answers[node] = _absent_with_tombs(st)

        await asyncio.gather(*(look(n) for n in unknown))

    def _decode(self, d: Decision) -> bytes:
        recs = {a.record.fragment.index: a for a in d.chosen.values() if a.record.fragment}  # type: ignore[union-attr]
        whole = [a for a in d.chosen.values() if a.record is not None and a.record.fragment is None]
        if whole:
            return whole[0].got.data if whole[0].got is not None else b""
        frag = next(iter(recs.values())).record.fragment  # type: ignore[union-attr]
        assert frag is not None
        pieces = {i: a.got.data for i, a in recs.items() if a.got is not None}
        value = codec(frag.k, frag.m, frag.codec).decode(pieces, frag.length, frag.digest)
        if len(value) != frag.length or xxhash.xxh3_64_intdigest(value) != frag.digest:
            raise self.unavailable("decoded bytes fail the value's length or xxh3 checksum")
        return value

    def behind(self, d: Decision) -> list[Node]:
        """Target nodes whose answers show a fragment to rebuild (read repair)."""
        if d.verdict != "value":
            return []
        bad = []
        for n, a in self.answers.items():
            if n not in self.targets:
                continue
            if a.kind in ("absent", "corrupt", "unrecorded"):
                bad.append(n)
            elif a.kind == "data" and a.record is not None and a.record.version < d.version:  # type: ignore[operator]
                bad.append(n)
        return bad

    def unavailable(self, why: str = "") -> FragmentsUnavailable:
        tried = {n.name: _describe(self.answers.get(n)) for n in self.order}
        for task in self.running.values():
            self.store._hold(task)
        _events.emit("replica-unavailable", {"key": self.key, "tried": tried, "why": why})
        return FragmentsUnavailable(self.key, tried, self.coding.k, self.coding.m)


def _absent_with_tombs(st: State) -> Answer:
    """The answer of a node that read absent, once its tombstones are known: data that
    landed since keeps the earlier absence, with the tomb."""
    a = from_state(st)
    return a if a.kind != "data" else Answer("absent", tomb=a.tomb, tomb_known=True)


def _tombs_of(node: Node, key: str) -> State | Missing | BaseException:
    """A node that read absent, asked in the same hop for its tombstones."""
    try:
        return node.state_now(key, tomb=True)  # type: ignore[attr-defined]
    except Exception as e:
        return e


def _fetched(node: Node, key: str, block: int) -> Got | BaseException:
    try:
        return fetch_now(node, key, None, block)
    except Exception as e:
        return e


def _describe(a: Answer | None) -> str:
    if a is None:
        return "not asked"
    if a.kind == "data" and a.record is not None:
        f = a.record.fragment
        what = f"fragment {f.index}" if f is not None else "whole copy"
        return f"{what} of version {a.record.version}"
    return f"{a.kind}: {a.why}" if a.why else a.kind
