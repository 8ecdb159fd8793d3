"""Quorum reads: the newest of ``read_quorum`` trustworthy answers, never a stale value.

A read fetches the value from the router's best replica and, in parallel, probes the
versions of the next ``Rq - 1`` replicas (a HEAD; on local nodes a stat + getxattr in
the same thread hop as the read). Every read quorum meets every write quorum
(``Rq = R - W + 1``), so the highest version among the answers is at least the last
acknowledged one:

- the fetched value is older than a probe's: fetch again from the newest holder;
- some replicas hold data and some do not (mixed answers): the ones without data are
  asked for their tombstones, and a tombstone newer than every value means "deleted";
- fewer than ``Rq`` trustworthy answers (down, corrupt): :class:`ReplicaUnavailable`
  naming each replica's state, never a possibly stale value (a probe past the grace
  counts as down while other replicas can be asked; with none left it is waited for);
- a value without a record (written by something else) is the lowest version, used only
  when no replica has a record;
- no answer holds data: every replica is asked before the key counts as absent (a probe
  past the grace counts as down). With a write-all quorum (``Rq`` = 1) one replica that
  lost its copy would otherwise make the key read as absent.

Replicas found older, missing, unrecorded or corrupt are repaired in the background.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from swarmstore import _clock, _events
from swarmstore.errors import ChecksumMismatch, ReplicaUnavailable, is_transport_error
from swarmstore.storage._incomplete import INCOMPLETE, held, never_completed, unproven
from swarmstore.storage._verified import Got, Missing, Refused, Unrecorded, fetch, fetch_now

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Node, State

__all__ = ["Answer", "QuorumRead", "Verdict"]


#: what a probe that has not answered within the grace stands as (until it answers)
_GRACE = "no answer within the grace"


def _held(a: Answer) -> Version | None:
    return held(a.record if a.kind == "data" else None, a.tomb if a.kind != "corrupt" else None)


def _name(node: Node) -> str:
    return node.name


@dataclass
class Answer:
    """What one replica said: ``kind`` is data, absent, unrecorded, corrupt, down or refused.

    ``record`` is a valid, key-bound record (a probe's bytes are not verified: ``got`` is
    None until they are fetched). ``tomb`` is known when ``tomb_known``.
    """

    kind: str
    record: Record | None = None
    got: Got | None = None
    unrecorded: bytes | None = None
    size: int | None = None
    tomb: Record | None = None
    tomb_known: bool = False
    why: str = ""

    @property
    def trusted(self) -> bool:
        return self.kind in ("data", "absent", "unrecorded")


def from_state(st: State) -> Answer:
    """A probe's answer."""
    if st.corrupt is not None:
        return Answer("corrupt", why=st.corrupt)
    if st.size is None:
        return Answer("absent", tomb=st.tomb, tomb_known=st.tomb_known)
    if st.record is None:
        return Answer("unrecorded", size=st.size, tomb=st.tomb, tomb_known=st.tomb_known)
    if st.record.size != st.size:  # truncated or extended: its bytes cannot match
        return Answer("corrupt", why=f"holds {st.size} bytes, its record says {st.record.size}")
    return Answer("data", record=st.record, tomb=st.tomb, tomb_known=st.tomb_known)


def from_error(e: BaseException) -> Answer:
    """The answer a failed attempt stands for."""
    if isinstance(e, Missing):
        return Answer("absent", why="missing")
    if isinstance(e, Unrecorded):
        return Answer("unrecorded", unrecorded=e.data, size=e.size, why="unrecorded")
    if isinstance(e, Refused):
        return Answer("refused", why=f"{type(e.error).__name__}: {e.error}")
    if isinstance(e, ChecksumMismatch):
        return Answer("corrupt", why=f"ChecksumMismatch: {e}")
    if isinstance(e, OSError) or is_transport_error(e):
        return Answer("down", why=f"{type(e).__name__}: {e}")
    raise e  # a bug or bad input: never an answer


@dataclass
class Verdict:
    """The outcome: ``got`` (the value), ``unrecorded`` bytes, or neither (absent)."""

    got: Got | None = None
    unrecorded: bytes | None = None
    size: int | None = None
    deleted_by: Record | None = None
    answers: dict[Node, Answer] | None = None


class QuorumRead:
    """One quorum read (or, with ``want_data=False``, a quorum version lookup) of a key."""

    def __init__(
        self, store: Coordinator, key: str, byte_range: ByteRequest | None, want_data: bool
    ) -> None:
        self.store, self.key, self.byte_range, self.want_data = store, key, byte_range, want_data
        targets, self.rest = store._ranked(key)
        hinted = store.hints.stale_nodes(key)
        self.order = sorted(targets, key=lambda n: n.name in hinted)
        self.targets = frozenset(targets)
        self.rq = min(store.read_quorum, len(targets))
        self.answers: dict[Node, Answer] = {}
        self._probes: dict[Node, asyncio.Task[None]] | None = None
        self._late: dict[Node, asyncio.Task[None]] = {}  # probes past the grace, running
        self._t0 = _clock.monotonic()
        self._rest_asked = False
        self.nbytes = _expected(byte_range)  # what the router can plan this request by

    # --- asking ----------------------------------------------------------------------------
    async def run(self) -> Verdict:
        if self.want_data:
            src, got, failures = await self.store._fetch(
                self.order, self._attempt, self.key, self.nbytes
            )
            await self._settle(src, got, failures)
        else:
            await self._probe(self.order[: max(1, self.rq)])
        for _ in range(2 * (len(self.order) + len(self.rest)) + 4):
            verdict = await self._step()
            if verdict is not None:
                verdict.answers = self.answers
                return verdict
        raise self._unavailable("the replicas kept changing during the read")

    async def _attempt(self, node: Node) -> Got:
        if self._probes is not None or node not in self.targets:
            return await fetch(node, self.key, self.byte_range, self.store.min_block)
        probes = [n for n in self.order if n is not node][: self.rq - 1]
        self._probes = {}
        if all(p.supports_sync for p in (node, *probes)):
            return await self._folded(node, probes)
        self._probes = {p: asyncio.ensure_future(self._probe_one(p)) for p in probes}
        return await fetch(node, self.key, self.byte_range, self.store.min_block)

    async def _folded(self, node: Node, probes: list[Node]) -> Got:
        """The read and its probes in one thread hop (inline for in-memory nodes)."""
        key, rng, block = self.key, self.byte_range, self.store.min_block

        def work() -> tuple[Got | BaseException, list[State | BaseException]]:
            states: list[State | BaseException] = []
            for p in probes:
                try:
                    states.append(p.state_now(key, tomb=False))  # type: ignore[attr-defined]
                except Exception as e:
                    states.append(e)
            try:
                return fetch_now(node, key, rng, block), states
            except Exception as e:
                return e, states

        inline = all(getattr(p, "inline_sync", False) for p in (node, *probes))
        got, states = work() if inline else await asyncio.to_thread(work)
        for p, st in zip(probes, states, strict=True):
            self.answers.setdefault(p, _answer(st))
        if isinstance(got, BaseException):
            raise got
        return got

    async def _probe_one(self, node: Node) -> None:
        try:
            st = await self.store.router.send(
                node, lambda n: n.state(self.key, tomb=False), name=_name
            )
        except Exception as e:
            self._answered(node, from_error(e))
            return
        self._answered(node, from_state(st))

    def _answered(self, node: Node, answer: Answer) -> None:
        """Keep a probe's answer; one past the grace replaces the "down" it stood as."""
        cur = self.answers.get(node)
        if cur is None or (self._late.pop(node, None) is not None and cur.why == _GRACE):
            self.answers[node] = answer

    async def _probe(self, nodes: list[Node]) -> None:
        ask = [n for n in nodes if n not in self.answers]
        tasks = {n: asyncio.ensure_future(self._probe_one(n)) for n in ask}
        if tasks:
            await asyncio.wait(tasks.values(), return_when="FIRST_COMPLETED")
            await self._bounded(tasks, _clock.monotonic())

    async def _bounded(self, tasks: dict[Node, asyncio.Task[None]], since: float) -> None:
        """Wait for probes a grace past ``since`` (a frozen node must not stall the read):
        one that has not answered then counts as down, and more replicas are asked."""
        wait = self.store.grace(since - self._t0)
        _, pending = await asyncio.wait(tasks.values(), timeout=wait)
        for node, task in tasks.items():
            if task in pending and node not in self.answers:
                self.answers[node] = Answer("down", why=_GRACE)
                self._late[node] = task
                self.store._hold(task)

    async def _settle(self, src: Node | None, got: Got | None, failures: dict[Node, Any]) -> None:
        for node, e in failures.items():
            self.answers[node] = from_error(e)
        if src is not None and got is not None:
            self.answers[src] = Answer("data", record=got.record, got=got)
        if self._probes:
            await self._bounded(self._probes, _clock.monotonic())

    # --- deciding --------------------------------------------------------------------------
    async def _step(self) -> Verdict | None:
        """Decide, or ask more and return None."""
        mine = {n: a for n, a in self.answers.items() if n in self.targets}
        if sum(a.trusted for a in mine.values()) < self.rq:
            unasked = [n for n in self.order if n not in self.answers]
            if unasked:
                await self._probe(unasked)
                return None
            late = {t for t in self._late.values() if not t.done()}
            if late:  # nobody left to ask: a slow replica beats ReplicaUnavailable
                await asyncio.wait(late, return_when="FIRST_COMPLETED")
                return None
            raise self._unavailable(f"fewer than {self.rq} trustworthy answers")
        data = {n: a for n, a in self.answers.items() if a.kind == "data"}
        unasked = [n for n in self.order if n not in self.answers]
        if not data and unasked:  # a replica that lost its copy is damage, not absence
            await self._probe(unasked)
            return None
        if not data and not self._rest_asked and self.rest:
            await self._ask_rest()
            return None
        if self._mixed() and not await self._tombs_known():
            return None
        tomb = max((a.tomb for a in self.answers.values() if a.tomb), key=_v, default=None)
        if await self._passed_over(data, tomb):
            return None
        if not data:
            return await self._without_records(tomb)
        best = max(a.record.version for a in data.values())  # type: ignore[union-attr]
        if tomb is not None and tomb.version > best:
            return Verdict(deleted_by=tomb)
        return await self._newest(best, data)

    async def _passed_over(self, data: dict[Node, Answer], tomb: Record | None) -> bool:
        """The newest version seen never completed (:mod:`._incomplete`): its holders'
        answers stand as absent from here on (True: decide again). With too few answers to
        tell, the other targets are asked first (True as well)."""
        tops = [a.record.version for a in data.values()]  # type: ignore[union-attr]
        top = max([*tops, *([tomb.version] if tomb is not None else [])], default=None)
        if top is None:
            return False
        mine = [n for n in self.answers if n in self.targets]
        held = [_held(self.answers[n]) for n in mine]
        w = self.store.write_quorum
        if never_completed(top, held, len(self.targets), w):
            for n in [n for n in self.answers if _held(self.answers[n]) == top]:
                a = self.answers[n]
                older = a.kind == "data" and a.record is not None and a.record.version < top
                self.answers[n] = (  # a tombstone at the top over older data: the data stands
                    replace(a, tomb=None)
                    if older
                    else Answer("absent", tomb_known=True, why=INCOMPLETE)
                )
            return True
        unasked = [n for n in self.order if n not in self.answers]
        if unasked and unproven(top, held, w):
            await self._probe(unasked)
            return True
        return False

    async def _newest(self, best: Version, data: dict[Node, Answer]) -> Verdict | None:
        holders = [n for n, a in data.items() if a.record.version == best]  # type: ignore[union-attr]
        have = [data[n].got for n in holders if data[n].got is not None]
        if have or not self.want_data:
            got = have[0] if have else None
            if got is None:
                rec = data[holders[0]].record
                got = Got(b"", rec, rec.size)  # type: ignore[union-attr, arg-type]
            return Verdict(got=got)
        src, got, failures = await self.store._fetch(
            holders, lambda n: fetch(n, self.key, self.byte_range, self.store.min_block), self.key
        )
        for node, e in failures.items():
            self.answers[node] = from_error(e)
        if src is not None and got is not None:
            self.answers[src] = Answer("data", record=got.record, got=got)
            return None
        unasked = [n for n in self.order if n not in self.answers]
        if not unasked:
            raise self._unavailable(f"version {best} is held only by replicas that fail")
        await self._probe(unasked)
        return None

    async def _without_records(self, tomb: Record | None) -> Verdict | None:
        """No recorded value anywhere: deleted, absent, or the unrecorded copies' value."""
        if tomb is not None:
            return Verdict(deleted_by=tomb)
        if any(a.kind == "corrupt" for n, a in self.answers.items() if n in self.targets):
            raise self._unavailable("a corrupt replica and no verified one")
        plain = {n: a for n, a in self.answers.items() if a.kind == "unrecorded"}
        if not plain:
            return Verdict()
        if not self.want_data:
            return Verdict(unrecorded=b"", size=next(iter(plain.values())).size)
        known = {a.unrecorded for a in plain.values() if a.unrecorded is not None}
        if len(known) > 1:
            raise self._unavailable("unrecorded copies disagree")
        if known:
            return Verdict(unrecorded=known.pop())
        src, got, failures = await self.store._fetch(  # only probes saw them: fetch the bytes
            list(plain),
            lambda n: fetch(n, self.key, self.byte_range, self.store.min_block),
            self.key,
        )
        for node, e in failures.items():
            self.answers[node] = from_error(e)
        if src is not None and got is not None:  # it gained a record meanwhile
            self.answers[src] = Answer("data", record=got.record, got=got)
        elif not any(isinstance(e, Unrecorded) for e in failures.values()):
            raise self._unavailable("unrecorded copies could not be read")
        return None

    def _mixed(self) -> bool:
        kinds = {a.kind for a in self.answers.values()}
        return "absent" in kinds and bool(kinds & {"data", "unrecorded", "corrupt"})

    async def _tombs_known(self) -> bool:
        unknown = [n for n, a in self.answers.items() if a.kind == "absent" and not a.tomb_known]
        if not unknown:
            return True

        async def look(node: Node) -> None:
            try:
                st = await self.store.router.send(
                    node, lambda n: n.state(self.key, tomb=True), name=_name
                )
            except Exception as e:
                self.answers[node] = from_error(e)
                return
            self.answers[node] = from_state(st)

        await asyncio.gather(*(look(n) for n in unknown))
        return False

    async def _ask_rest(self) -> None:
        """No target holds a recorded value: look at the other nodes (data placed before
        nodes were added, not yet rebalanced)."""
        self._rest_asked = True
        if self.want_data:
            src, got, failures = await self.store._fetch(
                list(self.rest),
                lambda n: fetch(n, self.key, self.byte_range, self.store.min_block),
                self.key,
            )
            for node, e in failures.items():
                if not isinstance(e, Missing):  # a missing copy elsewhere says nothing
                    self.answers[node] = from_error(e)
            if src is not None and got is not None:
                self.answers[src] = Answer("data", record=got.record, got=got)
        else:
            await self._probe(list(self.rest))
            for n in self.rest:
                if self.answers.get(n, Answer("x")).kind == "absent":
                    del self.answers[n]

    def _unavailable(self, why: str) -> ReplicaUnavailable:
        tried = {n.name: a.why or a.kind for n, a in self.answers.items()}
        for n in self.order:
            tried.setdefault(n.name, "not asked")
        _events.emit("replica-unavailable", {"key": self.key, "tried": tried, "why": why})
        return ReplicaUnavailable(self.key, tried)


def _expected(byte_range: ByteRequest | None) -> int | None:
    """The bytes a request asks for, when known before reading (a full read's size is not)."""
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest

    if isinstance(byte_range, RangeByteRequest):
        return max(0, byte_range.end - byte_range.start)
    if isinstance(byte_range, SuffixByteRequest):
        return byte_range.suffix
    return None


def _answer(st: State | BaseException) -> Answer:
    return from_error(st) if isinstance(st, BaseException) else from_state(st)


def _v(record: Record) -> Version:
    return record.version
