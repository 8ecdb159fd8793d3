"""Weighted rendezvous (highest-random-weight) hashing with failure domains.

One piece of code serves two jobs: storage placement (which nodes hold a key) and
compute affinity (which worker reads a chunk, so its cache stays warm). Rendezvous
hashing moves only the keys of a node that leaves (about 1/n of them) and, when a
node joins, only the keys the newcomer wins; ``hash(key) % n`` moves almost all.

Weights use the logarithmic method (Schindelhauer & Schomaker): score =
``-weight / ln(u)`` with ``u`` uniform in (0, 1) drawn from (xxh3 of the key) mixed with
(xxh3 of the member's name), so a node of weight 2 wins twice as many keys as a node of
weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import xxhash

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Sequence

__all__ = ["Member", "Rendezvous", "rank"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U53 = 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a bijective, well-mixing uint64 -> uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Member:
    """A participant of the hash ring: a storage node or a worker."""

    name: str
    weight: float = 1.0
    zone: Hashable | None = None
    _seed: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("member name must be non-empty")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"member {self.name!r}: weight must be a positive number")
        object.__setattr__(self, "_seed", xxhash.xxh3_64_intdigest(self.name.encode()))


def rank(key: str, members: Sequence[Member]) -> list[Member]:
    """All members ordered from most to least preferred for ``key``."""
    return Rendezvous(members).rank(key)


class Rendezvous:
    """Choose ``n`` members for a key, in distinct failure domains when there are enough.

    Scores for all members are computed in one vectorised pass (xxh3 of the key, mixed
    with each member's seed by splitmix64), so finding a key's owner among 1,000 workers
    costs microseconds, not a Python loop.

    >>> ring = Rendezvous([Member("a", zone="z1"), Member("b", zone="z1"), Member("c", zone="z2")])
    >>> sorted({m.zone for m in ring.choose("some/key", 2)})
    ['z1', 'z2']
    """

    def __init__(self, members: Iterable[Member]) -> None:
        self.members: tuple[Member, ...] = tuple(members)
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        self._seeds = np.array([m._seed for m in self.members], dtype=np.uint64)
        self._weights = np.array([m.weight for m in self.members], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Rendezvous({[m.name for m in self.members]})"

    def scores(self, key: str) -> np.ndarray:
        """Each member's weighted score for ``key`` (the highest wins)."""
        h = np.uint64(xxhash.xxh3_64_intdigest(key.encode()))
        u = ((_mix(self._seeds ^ h) >> np.uint64(11)).astype(np.float64) + 0.5) * _U53
        return -self._weights / np.log(u)  # type: ignore[no-any-return]

    def rank(self, key: str) -> list[Member]:
        """Every member, most preferred first (the first ``n`` are :meth:`choose`'s picks)."""
        order = np.argsort(-self.scores(key), kind="stable")
        return self._spread([self.members[i] for i in order], len(order))

    def choose(self, key: str, n: int) -> list[Member]:
        """The ``n`` preferred members, one per failure domain while domains last."""
        if n > len(self.members):
            raise ValueError(f"cannot choose {n} of {len(self.members)} members")
        order = np.argsort(-self.scores(key), kind="stable")
        return self._spread([self.members[i] for i in order], n)

    def owner(self, key: str) -> Member:
        """The single preferred member (chunk affinity)."""
        if not self.members:
            raise ValueError("no members to choose from")
        return self.members[int(np.argmax(self.scores(key)))]

    @staticmethod
    def _spread(ordered: list[Member], n: int) -> list[Member]:
        picked: list[Member] = []
        zones: set[Hashable] = set()
        rest: list[Member] = []
        for m in ordered:
            zone = m.zone if m.zone is not None else ("__member__", m.name)
            if zone in zones:
                rest.append(m)
                continue
            zones.add(zone)
            picked.append(m)
        return (picked + rest)[:n]
