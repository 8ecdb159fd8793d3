"""Quorum reads in the calling thread, for stores whose nodes all have a sync form.

zarr's fused codec pipeline calls ``get_sync`` once per chunk from its worker threads. Over
local directories and memory nodes a read is a few syscalls (or dict lookups), so hopping
to the I/O loop and back would cost more than the read. :func:`read_now` runs the same
quorum read as :class:`~swarmstore.storage._read.QuorumRead` does on its first, folded
step, in this thread, and decides with the same answer objects:

- the value from the first replica in the router's order (hinted replicas last, as the
  loop path orders them), the versions of the next ``Rq - 1`` probed in the same pass;
- a replica that is missing, corrupt or down is recorded as such and the next one is read
  (fail-over), so bytes that fail their checksum are never returned;
- the verdict is decided here only when it needs no further I/O: ``Rq`` trustworthy
  answers and the fetched value at the newest version seen, or every replica (and every
  other node) missing the key. Anything else (a stale fetched value, mixed or unrecorded
  answers, too few answers) returns None and the caller runs the full loop path, which
  asks more replicas, looks at tombstones and reports unavailability.

Replicas found behind are repaired exactly as after a loop-path read: the repair is
scheduled on the I/O loop (:mod:`swarmstore.storage._repairs`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from swarmstore import _sync
from swarmstore.storage import _repairs
from swarmstore.storage._read import Answer, Verdict, from_error, from_state
from swarmstore.storage._verified import Missing, fetch_now

if TYPE_CHECKING:
    from collections.abc import Sequence

    from zarr.abc.store import ByteRequest

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node

__all__ = ["all_sync", "read_now"]


def _name(node: Node) -> str:
    return node.name


def all_sync(nodes: Sequence[Node]) -> bool:
    """Whether every node in ``nodes`` can be read in the calling thread."""
    return all(n.supports_sync for n in nodes)


def read_now(store: Coordinator, key: str, byte_range: ByteRequest | None) -> Verdict | None:
    """The quorum read of ``key`` decided in this thread, or None: take the loop path.

    Bugs (an exception that is no node failure) are raised, as on the loop path.
    """
    targets, rest = store._ranked(key)
    if not (all_sync(targets) and all_sync(rest)):
        return None
    hinted = store.hints.stale_nodes(key)
    order = sorted(targets, key=lambda n: n.name in hinted) if hinted else list(targets)
    rq = min(store.read_quorum, len(targets))
    answers: dict[Node, Answer] = {}
    tries = store.router.order(order, _name) if len(order) > 1 else order
    for i, node in enumerate(tries):
        if i == 0:
            _probe([n for n in order if n is not node][: rq - 1], key, answers)
        try:
            got = fetch_now(node, key, byte_range, store.min_block)
        except Exception as e:
            answers[node] = from_error(e)  # raises a bug
            continue
        answers[node] = Answer("data", record=got.record, got=got)
        break
    verdict = _decide(answers, targets, rq)
    if verdict is None and not any(a.kind == "data" for a in answers.values()):
        verdict = _absent(store, key, byte_range, rest, answers) if _all_absent(answers) else None
    if verdict is None:
        return None
    verdict.answers = answers
    _repair(store, key, verdict, full=byte_range is None)
    return verdict


def _probe(probes: list[Node], key: str, answers: dict[Node, Answer]) -> None:
    """The versions of ``probes`` (no bytes, no tombstones), as the folded loop step."""
    for p in probes:
        try:
            st = p.state_now(key, tomb=False)  # type: ignore[attr-defined]
        except Exception as e:
            answers.setdefault(p, from_error(e))
            continue
        answers.setdefault(p, from_state(st))


def _decide(answers: dict[Node, Answer], targets: Sequence[Node], rq: int) -> Verdict | None:
    """The verdict when the answers settle it: ``Rq`` trusted answers, no absent one beside
    data (that needs the tombstones), and the fetched value at the newest version."""
    trusted = sum(a.trusted for n, a in answers.items() if n in targets)
    data = [a for a in answers.values() if a.kind == "data"]
    if trusted < rq or not data or any(a.kind == "absent" for a in answers.values()):
        return None
    if len({a.record.version for a in data}) > 1:  # type: ignore[union-attr]
        return None  # replicas disagree: the loop path judges (a newest that never completed)
    best = max(a.record.version for a in data)  # type: ignore[union-attr]
    have = [a.got for a in data if a.got is not None and a.record.version == best]  # type: ignore[union-attr]
    return Verdict(got=have[0]) if have else None


def _all_absent(answers: dict[Node, Answer]) -> bool:
    return bool(answers) and all(a.kind == "absent" for a in answers.values())


def _absent(
    store: Coordinator,
    key: str,
    byte_range: ByteRequest | None,
    rest: Sequence[Node],
    answers: dict[Node, Answer],
) -> Verdict | None:
    """Every replica asked lacks the key: absent, once the quorum agrees and no other node
    holds it either (data placed before nodes were added); else None (the loop path)."""
    targets = store._ranked(key)[0]
    rq = min(store.read_quorum, len(targets))
    if sum(n in answers for n in targets) < rq:
        return None
    for node in rest:
        try:
            fetch_now(node, key, byte_range, store.min_block)
        except Missing:
            continue
        except Exception as e:
            from_error(e)  # raises a bug; a node failure: let the loop path judge
            return None
        return None  # a copy elsewhere: the loop path reads and repairs it
    return Verdict()


def _repair(store: Coordinator, key: str, verdict: Verdict, *, full: bool) -> None:
    """Schedule read repair on the I/O loop when an answer is behind the verdict."""
    if not store.read_repair or not _behind(verdict):
        return
    repair = functools.partial(_repairs.after_read, store, key, verdict, full=full)
    _sync.io_loop().call_soon_threadsafe(repair)


def _behind(verdict: Verdict) -> bool:
    answers = verdict.answers or {}
    if verdict.got is None:
        return False  # absent everywhere asked: nothing to repair
    best = verdict.got.record.version
    return any(a.kind != "data" or a.record.version != best for a in answers.values())  # type: ignore[union-attr]
