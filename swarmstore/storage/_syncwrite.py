"""Writes and deletes in the calling thread, for keys whose replicas all have sync forms.

The protocol is the loop path's (:mod:`swarmstore.storage._write`), step for step, with
its decisions reused: phase 1 and staging on every target (``prepare_now``), the version
from :func:`~swarmstore.storage._write.versions` and ``next_version``, then each replica's
compare-and-swap commit (``commit_now``, :func:`~swarmstore.storage._node.may_replace`).
What differs is only that the targets are asked one after the other, in this thread.

The sync form handles the healthy case and hands everything else to the loop path, which
has the graces, laggard handling and hint replays:

- pending hints anywhere in this store, or a target without sync write forms: not tried;
- a target that fails phase 1 or staging, or too few trustworthy answers: the staged
  bytes are dropped (nothing was visible) and the write starts over on the loop path;
- a commit that fails after others landed: the missed replicas get hints exactly as on the
  loop path (:func:`~swarmstore.storage._handoff.note_missed`, run on the I/O loop), and
  fewer than ``W`` acknowledgements raise :class:`~swarmstore.errors.QuorumError`.

A delete that fails part way starts over on the loop path, at a newer version: a
tombstone already laid is outranked by it, never left to contradict it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from swarmstore import _sync
from swarmstore.storage._handoff import note_missed
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import acknowledged
from swarmstore.storage._write import stale, versions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node, Pending, State

__all__ = ["delete_now", "put_now", "writable_now"]

#: what a node failure looks like (anything else is a bug or bad input, and is raised)
_FAILURES = (OSError, KeyError)


def writable_now(store: Coordinator, nodes: Sequence[Node]) -> bool:
    """Whether a mutation over ``nodes`` may run in this thread (see the module docstring)."""
    if store.hints.count():
        return False
    return all(getattr(n, "supports_sync_write", False) for n in nodes)


def put_now(store: Coordinator, key: str, data: bytes) -> list[Node] | None:
    """Write ``data`` to ``key``'s replicas in this thread; the acknowledging nodes, or
    None when the write must run on the loop path instead (nothing became visible, or its
    commits went stale: the loop path writes afresh)."""
    targets = store.targets(key)
    if not writable_now(store, targets):
        return None
    rq, w = store.quorums(len(targets))
    staged = _stage(targets, key, data)
    if staged is None:
        return None
    trusted = [p.seen for p in staged.values() if p.seen.corrupt is None]
    if len(trusted) < rq or len(staged) < w:
        _abort(staged)
        return None
    stamped = Record.of(data, store.min_block).stamped(store.next_version(key, versions(trusted)))
    acked: list[Node] = []
    failures: dict[Node, BaseException] = {}
    for node, pending in staged.items():
        try:
            acknowledged(node.commit_now(pending, stamped), node, key)  # type: ignore[attr-defined]
        except _FAILURES as e:
            failures[node] = e
            continue
        acked.append(node)
    if failures:
        missed = [n for n in targets if n not in acked]
        _sync.run(note_missed(store, key, missed, acked, stamped.version))
    if len(acked) < w:
        if stale(failures):
            return None  # a delete collected between the phases: the loop path starts over
        raise store._quorum_error(key, "set", len(acked), w, failures)
    return acked


def _stage(targets: Sequence[Node], key: str, data: bytes) -> dict[Node, Pending] | None:
    """Phase 1 and staging on every target; None (all dropped) when any one fails."""
    staged: dict[Node, Pending] = {}
    try:
        for node in targets:
            pending = node.prepare_now(key, data)  # type: ignore[attr-defined]
            if pending.error is not None:
                _abort(staged)
                return None
            staged[node] = pending
    except _FAILURES:
        _abort(staged)
        return None
    except BaseException:
        _abort(staged)
        raise
    return staged


def _abort(staged: dict[Node, Pending]) -> None:
    for node, pending in staged.items():
        with contextlib.suppress(*_FAILURES):
            node.abort_now(pending)  # type: ignore[attr-defined]


def delete_now(store: Coordinator, key: str) -> bool:
    """Delete ``key`` in this thread; False when it must run on the loop path instead."""
    targets, rest = store._ranked(key)
    if not writable_now(store, (*targets, *rest)):
        return False
    rq, _ = store.quorums(len(targets))
    states = _states(targets, key)
    if states is None:
        return False
    trusted = [s for s in states.values() if s.corrupt is None]
    if len(trusted) < rq:
        return False
    if not any(s.size is not None for s in states.values()):
        return _clean(rest, key)  # nothing to delete on a read quorum, nor elsewhere
    tomb = Record.tombstone(store.next_version(key, versions(trusted)))
    try:
        for node in targets:
            node.bury_now(key, tomb, states[node])  # type: ignore[attr-defined]
    except _FAILURES:
        return False
    if not _clean(rest, key):
        return False
    for node in targets:  # every node applied it: drop the tombstones again
        with contextlib.suppress(*_FAILURES):
            node.unbury_now(key, tomb)  # type: ignore[attr-defined]
    return True


def _states(targets: Sequence[Node], key: str) -> dict[Node, State] | None:
    states: dict[Node, Any] = {}
    for node in targets:
        try:
            states[node] = node.state_now(key)  # type: ignore[attr-defined]
        except _FAILURES:
            return None
    return states


def _clean(rest: Sequence[Node], key: str) -> bool:
    """Remove copies of ``key`` outside its targets; True when every node answered."""
    try:
        for node in rest:
            node.remove_now(key)  # type: ignore[attr-defined]
    except _FAILURES:
        return False
    return True
