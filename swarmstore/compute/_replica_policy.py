"""Replica decisions and the Active Memory Manager policy that keeps critical keys at N copies.

- Plain decisions that know nothing about Dask: :func:`desired_replicas`,
  :func:`pick_recipients`, :func:`narrow_downscaling`.
- :class:`HonourReplicaCounts`, a policy of the scheduler's own Active Memory Manager (the
  user's AMM: its interval, its ``start`` switch). It yields suggestions for the keys that
  asked for copies and for nothing else; the AMM applies them. Stock ``ReduceReplicas``
  stays in that AMM and keeps governing every other key; :func:`shield` only hides the
  protected keys from it, so it no longer drops the copies they asked for (it hard-codes one
  desired copy: ``desired_replicas = 1  # TODO have a marker on TaskState``).

The policy joins the AMM when the first key asks for copies and leaves it when none is left,
so a scheduler where nobody marks a key critical runs exactly the stock policies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import (
    ActiveMemoryManagerPolicy,
    ReduceReplicas,
    Suggestion,
    SuggestionGenerator,
)
from distributed.core import Status

from swarmstore.errors import PlacementError

if TYPE_CHECKING:
    from distributed.active_memory_manager import ActiveMemoryManagerExtension
    from distributed.scheduler import TaskState, WorkerState

__all__ = [
    "Candidate",
    "HonourReplicaCounts",
    "desired_replicas",
    "narrow_downscaling",
    "pick_recipients",
    "shield",
    "unshield",
]


# --------------------------------------------------------------------------- decisions
def desired_replicas(annotation: Any, default: int) -> int | None:
    """Copies wanted for a task from its ``swarm`` annotation, or ``None`` if not tracked.

    ``{"replicas": N}`` asks for N copies; ``{"critical": True}`` for ``default`` copies.
    Anything else (no annotation, ``critical: False``) is not tracked.

    >>> desired_replicas({"critical": True}, 2), desired_replicas({"replicas": 3}, 2)
    (2, 3)
    >>> desired_replicas({"persist": True}, 2) is None
    True
    """
    if annotation is None:
        return None
    if isinstance(annotation, Mapping):
        get = annotation.get
    else:  # a parsed requirements object from SwarmPlugin

        def get(name: str, default_: Any = None) -> Any:
            return getattr(annotation, name, default_)

    n = get("replicas")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlacementError(f"swarm annotation replicas={n!r} must be an integer >= 1")
        return n
    if get("critical"):
        return max(1, int(default))
    return None


@dataclass(frozen=True)
class Candidate:
    """A worker that could receive a replica: its address, host and current memory."""

    address: str
    host: str
    memory: int = 0


def recipients_for(
    ts: Any,
    missing: int,
    targets: Mapping[str, float],
    workers: Mapping[str, Any],
    running: Iterable[Any],
) -> list[str]:
    """The workers that should fetch ``missing`` more copies of ``ts`` now: running
    workers that neither hold it nor are fetching it (``targets``), fresh hosts first."""
    if missing <= 0:
        return []
    hosts = {ws.host for ws in ts.who_has}
    hosts.update(workers[a].host for a in targets if a in workers)
    cands = [
        Candidate(ws.address, ws.host, ws.nbytes)
        for ws in running
        if ws not in ts.who_has and ws.address not in targets and ws.status == Status.running
    ]
    return pick_recipients(hosts, cands, missing)


def pick_recipients(
    holder_hosts: Iterable[str], candidates: Sequence[Candidate], n: int
) -> list[str]:
    """Choose ``n`` recipients, on hosts that hold no copy yet while such hosts remain.

    Within a tier the least loaded worker wins; each pick's host counts as used, so two
    new copies do not land on one host when another host is free.

    >>> cands = [Candidate("a", "h1", 10), Candidate("b", "h2", 50), Candidate("c", "h2", 0)]
    >>> pick_recipients({"h1"}, cands, 2)
    ['c', 'a']
    """
    used = set(holder_hosts)
    left = sorted(candidates, key=lambda c: (c.memory, c.address))
    picked: list[str] = []
    while left and len(picked) < n:
        best = next((c for c in left if c.host not in used), left[0])
        left.remove(best)
        used.add(best.host)
        picked.append(best.address)
    return picked


def narrow_downscaling(
    proposed: Sequence[str],
    holders: Mapping[Hashable, set[str]],
    gpu_workers: set[str],
    *,
    keep_last_gpu: bool = True,
) -> list[str]:
    """The subset of ``proposed`` that may retire together without losing anything we guard.

    A worker stays if retiring it (with the workers already accepted) would leave a tracked
    key with no holder, or, with ``keep_last_gpu``, the cluster with no GPU worker.
    Order is preserved; the earliest proposals win.

    >>> narrow_downscaling(["a", "b"], {"k": {"a", "b"}}, set())
    ['a']
    """
    by_worker: defaultdict[str, list[Hashable]] = defaultdict(list)
    for key, who in holders.items():
        for addr in who:
            by_worker[addr].append(key)
    leaving: set[str] = set()
    out: list[str] = []
    for addr in proposed:
        gone = leaving | {addr}
        if any(not (holders[k] - gone) for k in by_worker.get(addr, ())):
            continue
        if keep_last_gpu and addr in gpu_workers and not (gpu_workers - gone):
            continue
        leaving.add(addr)
        out.append(addr)
    return out


# --------------------------------------------------------------------------- shielding
class _ShieldedScheduler:
    """The scheduler as a shielded policy sees it: ``replicated_tasks`` without the
    protected keys; every other attribute is the scheduler's own."""

    def __init__(self, scheduler: Any, protected: Mapping[Hashable, int]) -> None:
        self._scheduler = scheduler
        self._protected = protected

    @property
    def replicated_tasks(self) -> Iterator[TaskState]:
        protected = self._protected
        return (ts for ts in self._scheduler.replicated_tasks if ts.key not in protected)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class _ShieldedManager:
    """What a shielded policy sees as its ``manager``: the AMM itself, except that its
    ``scheduler`` hides the protected keys (``pending`` and the rest are the AMM's)."""

    def __init__(self, manager: ActiveMemoryManagerExtension, protected: Mapping) -> None:
        self.manager = manager
        self.scheduler = _ShieldedScheduler(manager.scheduler, protected)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.manager, name)


def shield(manager: ActiveMemoryManagerExtension, protected: Mapping[Hashable, int]) -> int:
    """Hide the keys of ``protected`` from every ``ReduceReplicas`` in ``manager``.

    The policies stay in the AMM, unchanged and in place; each keeps dropping the surplus
    copies of every other key. Returns how many policies were shielded now.
    """
    n = 0
    for policy in list(manager.policies):
        if isinstance(policy, ReduceReplicas) and not isinstance(policy.manager, _ShieldedManager):
            policy.manager = _ShieldedManager(manager, protected)  # type: ignore[assignment]
            n += 1
    return n


def unshield(manager: ActiveMemoryManagerExtension) -> None:
    """Undo :func:`shield`: every policy of ``manager`` sees the whole scheduler again."""
    for policy in list(manager.policies):
        if isinstance(policy.manager, _ShieldedManager):
            policy.manager = policy.manager.manager


# --------------------------------------------------------------------------- AMM policy
class HonourReplicaCounts(ActiveMemoryManagerPolicy):
    """Keep each protected key at its desired count: add missing copies, drop surplus ones.

    ``desired`` maps key -> copies (>= 2) for the keys that asked for them; no other key is
    touched. New copies go to ``fresh_hosts(ts)`` (workers on hosts holding none, or ``None``
    for any); surplus copies leave hosts that hold two first. ``in_flight(ts)`` counts copies
    requested outside the AMM and not yet arrived, so they are not asked for twice. As stock
    does, a copy is kept for each worker with a dependent waiting on the key.
    """

    __slots__ = ("desired", "fresh_hosts", "in_flight")

    def __init__(
        self,
        desired: Mapping[Hashable, int],
        *,
        fresh_hosts: Callable[[TaskState], set[WorkerState] | None] = lambda ts: None,
        in_flight: Callable[[TaskState], int] = lambda ts: 0,
    ) -> None:
        self.desired = desired
        self.fresh_hosts = fresh_hosts
        self.in_flight = in_flight

    def __repr__(self) -> str:
        return f"HonourReplicaCounts(tracked={len(self.desired)})"

    def run(self) -> SuggestionGenerator:
        manager = self.manager
        shield(manager, self.desired)  # a ReduceReplicas added since we joined
        tasks = manager.scheduler.tasks
        for key, want in list(self.desired.items()):
            ts = tasks.get(key)
            if ts is None or ts.state != "memory" or not ts.who_has:
                continue
            repl, drop = manager.pending.get(ts, (set(), set()))
            have = len(ts.who_has) + len(repl) - len(drop)
            missing = want - have - self.in_flight(ts)
            for _ in range(missing):
                if (yield Suggestion("replicate", ts, self.fresh_hosts(ts))) is None:
                    break
            for _ in range(have - max(want, _waiting_workers(ts, want))):
                yield Suggestion("drop", ts, _crowded_holders(ts))


def _waiting_workers(ts: TaskState, want: int) -> int:
    """Copies stock keeps for dependents: one per worker with a waiter (few waiters only)."""
    nwaiters = len(ts.waiters or ())
    if want < nwaiters < 20:
        nwaiters = len({w.processing_on or w for w in ts.waiters or ()})
    return nwaiters


def _crowded_holders(ts: TaskState) -> set[WorkerState] | None:
    """Holders that share a host with another holder (the first to drop), or ``None``."""
    per_host: defaultdict[str, set[WorkerState]] = defaultdict(set)
    for ws in ts.who_has or ():
        per_host[ws.host].add(ws)
    crowded = {ws for group in per_host.values() if len(group) > 1 for ws in group}
    return crowded or None
