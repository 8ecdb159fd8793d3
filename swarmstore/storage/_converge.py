"""Bring every replica of one key to the newest version: read repair, hints and repair.

``examine`` reads and verifies one replica and its tombstone; ``decide`` picks the newest
trustworthy version (a verified value or a tombstone; values without a record only when
no replica has one, and only if they agree); ``converge`` writes it where it is missing
or older, by the same compare-and-swap the writes use, so a repair racing a newer write
never regresses it. Nothing is deleted unless a newer tombstone says so, and tombstones
are dropped only when every node answered and none still holds the value.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from swarmstore.errors import ChecksumMismatch
from swarmstore.network import qos
from swarmstore.storage._fragments import refuse_fragment
from swarmstore.storage._incomplete import INCOMPLETE, held, never_completed
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import State
from swarmstore.storage._patience import bounded, send
from swarmstore.storage._verified import Missing, Refused, Unrecorded, fetch

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node

__all__ = ["Look", "Outcome", "converge", "decide", "examine"]


def _name(node: Node) -> str:
    return node.name


@dataclass
class Look:
    """One replica, examined: ``kind`` is ok, unrecorded, missing, corrupt or down."""

    node: Node
    kind: str
    state: State | None = None
    record: Record | None = None
    data: bytes | None = None
    why: str = ""

    @property
    def tomb(self) -> Record | None:
        return self.state.tomb if self.state is not None else None


@dataclass
class Winner:
    """What every target should hold: a value (``record``, ``data``) or a tombstone."""

    record: Record
    data: bytes | None = None
    adopted: bool = False

    @property
    def deleted(self) -> bool:
        return self.record.deleted


@dataclass
class Outcome:
    """What ``converge`` did for one key."""

    winner: Winner | None = None
    written: list[Node] = field(default_factory=list)
    failed: list[tuple[Node, str]] = field(default_factory=list)
    current: set[Node] = field(default_factory=set)
    collected: bool = False
    #: no winner because nothing is left (see :func:`gone`): not a loss to report
    gone: bool = False

    async def apply(self, store: Coordinator, node: Node, step: Awaitable[Any]) -> None:
        """Run one node's fix: then it is written and current, or failed, with why."""
        try:
            await step
        except Exception as e:
            store._reraise_bugs([e])
            self.failed.append((node, f"{type(e).__name__}: {e}"))
            return
        self.written.append(node)
        self.current.add(node)


def gone(looks: list[Look]) -> bool:
    """Every node answered and none holds data or a tombstone: the key is gone (deleted
    and collected by another coordinator after the inventory listed it), not lost."""
    return bool(looks) and all(lk.kind == "missing" and lk.tomb is None for lk in looks)


async def examine(store: Coordinator, node: Node, key: str) -> Look:
    """Read and verify one replica, through the router (the ambient QoS lane)."""
    try:
        st = await send(store, node, lambda n: n.state(key, tomb=True))
    except Exception as e:
        store._reraise_bugs([e])
        return Look(node, "down", why=f"{type(e).__name__}: {e}")
    if st.corrupt is not None:
        return Look(node, "corrupt", st, why=st.corrupt)
    if st.size is None:
        return Look(node, "missing", st)
    try:
        got = await send(store, node, lambda n: fetch(n, key, None, store.min_block))
    except Unrecorded as e:
        return Look(node, "unrecorded", st, data=e.data)
    except Missing:
        return Look(node, "missing", st)
    except ChecksumMismatch as e:
        return Look(node, "corrupt", st, why=str(e))
    except Exception as e:
        store._reraise_bugs([e])
        why = e.error if isinstance(e, Refused) else e
        return Look(node, "down", st, why=f"{type(why).__name__}: {why}")
    return Look(node, "ok", st, got.record, got.data)


def _held(lk: Look) -> Version | None:
    return held(lk.record if lk.kind == "ok" else None, lk.tomb if lk.kind != "corrupt" else None)


def passed_over(looks: list[Look], targets: set[Node], w: int) -> tuple[list[Look], bool]:
    """``looks`` without the newest version while it never completed (:mod:`._incomplete`;
    its holders stand as missing), and whether any was passed over."""
    passed = False
    while True:
        held = [_held(lk) for lk in looks if lk.node in targets]
        top = max((v for v in held if v is not None), default=None)
        if top is None or not never_completed(top, held, len(targets), w):
            return looks, passed
        passed = True
        looks = [_stands_missing(lk, top) if _held(lk) == top else lk for lk in looks]


def _stands_missing(lk: Look, top: Version) -> Look:
    """A replica holding ``top`` (a write that never completed) as one holding nothing:
    its state kept for compare-and-swap, less a tombstone at ``top``."""
    st = lk.state
    if st is not None and st.tomb is not None and st.tomb.version == top:
        st = replace(st, tomb=None)
    if lk.kind == "ok" and lk.record is not None and lk.record.version < top:
        return replace(lk, state=st)  # the tombstone was the newest: the older data stands
    return Look(lk.node, "missing", st, why=INCOMPLETE)


def decide(looks: list[Look]) -> Winner | None:
    """The newest trustworthy version among ``looks``; None when nothing can be trusted."""
    ok = [lk for lk in looks if lk.kind == "ok" and lk.record is not None]
    tombs = [t for lk in looks if (t := lk.tomb) is not None]
    best = max(ok, key=lambda lk: lk.record.version, default=None)  # type: ignore[union-attr]
    tomb = max(tombs, key=lambda t: t.version, default=None)
    if tomb is not None and (best is None or tomb.version > best.record.version):  # type: ignore[union-attr]
        return Winner(tomb)
    if best is not None:
        return Winner(best.record, best.data)  # type: ignore[arg-type]
    plain = {lk.data for lk in looks if lk.kind == "unrecorded" and lk.data is not None}
    if len(plain) == 1 and not any(lk.kind == "corrupt" for lk in looks):
        data = plain.pop()
        return Winner(Record.of(data), data, adopted=True)
    return None


async def converge(store: Coordinator, key: str, extra: tuple[Node, ...] = ()) -> Outcome:
    """Give ``key``'s targets the newest version (``extra``: other nodes holding copies).

    When the newest is a tombstone, every other node is looked at too: copies there are
    removed, and the tombstones are dropped once every node answered and none holds data.
    """
    targets, rest = store._ranked(key)
    nodes = list(dict.fromkeys([*targets, *extra]))
    with qos("bulk"):
        looks = list(await asyncio.gather(*(examine(store, n, key) for n in nodes)))
        for lk in looks:  # never copy a fragment about as if it were the value
            refuse_fragment(key, lk)
        seen = _seen(looks)
        examined = looks
        looks, passed = passed_over(looks, set(targets), store.write_quorum)
        out = Outcome(decide(looks))
        win = out.winner
        if win is None:
            out.gone = gone(looks)
            return out
        if win.deleted:
            others = [n for n in rest if n not in nodes]
            looks += await asyncio.gather(*(examine(store, n, key) for n in others))
        if passed or (not win.deleted and (win.adopted or win.record.legacy)):
            # above every version seen (a passed-over one too): as a current, versioned record
            win.record = win.record.stamped(store.next_version(key, seen))
        mine = set(targets)
        await asyncio.gather(*(_fix(store, key, lk, win, lk.node in mine, out) for lk in looks))
        if win.deleted and not out.failed and all(lk.node in out.current for lk in looks):
            await asyncio.gather(
                *(
                    store.router.send(n, lambda n, t=t: n.unbury(key, t), name=_name)
                    for n, t in _buried(examined, win, set(targets))
                ),
                return_exceptions=True,
            )
            out.collected = True
    return out


def _buried(examined: list[Look], win: Winner, targets: set[Node]) -> list[tuple[Node, Record]]:
    """The tombstones a collection drops: on every target, the winner's, and the one the
    target held when examined, if older. A re-stamped winner (above a passed-over
    version) is newer than the tombstones the targets already held; dropping only its own
    version left those behind on every target but the ones it was laid on (found by the
    state machine: a create whose reply was lost on one target, over a delete's tombstones
    on the others). ``unbury`` drops a version only if it is still the one held, so a
    newer delete's tombstone laid meanwhile stays."""
    out = []
    for lk in examined:
        if lk.node not in targets:
            continue
        out.append((lk.node, win.record))
        t = lk.tomb
        if t is not None and t.version < win.record.version:
            out.append((lk.node, t))
    return out


def _seen(looks: list[Look]) -> list[Any]:
    out = []
    for lk in looks:
        if lk.state is not None and lk.state.corrupt is None and lk.state.version is not None:
            out.append(lk.state.version)
    return out


def _current(lk: Look, win: Winner, target: bool) -> bool:
    if win.deleted:
        return lk.state is not None and lk.state.size is None
    return target and lk.kind == "ok" and lk.record == win.record


async def _fix(
    store: Coordinator, key: str, lk: Look, win: Winner, target: bool, out: Outcome
) -> None:
    if lk.kind == "down":
        out.failed.append((lk.node, lk.why or "unreachable"))
        return
    if _current(lk, win, target):
        out.current.add(lk.node)
        return
    if not target and not win.deleted:
        return  # a copy outside the targets: rebalance moves or drops it
    if win.deleted and target:
        seen = lk.state if lk.state is not None else State(tomb_known=False)
        step = store.router.send(lk.node, lambda n: n.bury(key, win.record, seen), name=_name)
    elif win.deleted:
        step = store.router.send(lk.node, lambda n: n.remove(key), name=_name)
    else:
        step = _copy(store, lk.node, key, win)
    await out.apply(store, lk.node, bounded(store, lk.node, step))


async def _copy(store: Coordinator, node: Node, key: str, win: Winner) -> None:
    data = win.data
    assert data is not None

    async def write(n: Node) -> None:
        pending = await n.prepare(key, data)
        if pending.error is not None:
            raise pending.error
        await n.commit(pending, win.record, heal=True)

    await store.router.send(node, write, name=_name, nbytes=len(data))
