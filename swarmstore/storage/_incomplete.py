"""The newest version seen may be a write (or a delete) that never completed: pass it over.

A write that failed below its quorum keeps the commits it made: with ``R = 3, W = 2`` a
write that only one replica committed, then a write acknowledged by the other two whose
phase 1 did not hear from that one, chose its version without seeing the failed one's. Its
version can be the lower (same counter, writer ids break the tie), and a read that met the
failed write's replica returned the older, failed value after the acknowledged one (found
by the state machine on a saturated machine, about one run in two of the same steps).

The rule (the one erasure-coded reads use, :mod:`._coded_read`): compare-and-swap never
lets a replica go back, so a replica holding an older version (or, holding no data, an
older tombstone) never held the newest one. With ``R - W + 1`` targets holding something
older, at most ``W - 1`` ever held the newest: it was never acknowledged, and the newest
version that was can be read. Repair rewrites the winner at a version above everything
seen, so the replicas agree again (compare-and-swap would refuse it at its own version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from swarmstore.storage._integrity import Record, Version

__all__ = ["INCOMPLETE", "held", "never_completed", "unproven"]

#: why a replica holding a write that never completed stands as holding nothing
INCOMPLETE = "holds a write that never completed"


def held(data: Record | None, tomb: Record | None) -> Version | None:
    """The newest version a replica shows it holds: its data's record (``data``) or its
    tombstone (``tomb``), whichever is newer. Both at once is a delete that crashed between
    its tombstone and the data's removal: the tombstone is what that replica last took."""
    versions = [r.version for r in (data, tomb) if r is not None]
    return max(versions, default=None)


def never_completed(top: Version, held: Iterable[Version | None], targets: int, w: int) -> bool:
    """Whether ``top`` never reached ``w`` of ``targets`` replicas, from the versions the
    targets that answered hold (``None``: nothing known: missing, down, unreadable).

    >>> never_completed((1, 9), [(1, 2), (1, 2), (1, 9)], targets=3, w=2)
    True
    >>> never_completed((1, 9), [(1, 2), None, (1, 9)], targets=3, w=2)  # not proven
    False
    >>> never_completed((2, 1), [(1, 5)], targets=3, w=3)  # write-all: one older is enough
    True
    """
    older = sum(1 for v in held if v is not None and v < top)
    return older >= targets - w + 1


def unproven(top: Version, held: Iterable[Version | None], w: int) -> bool:
    """Whether fewer than ``w`` of the answers hold ``top`` while some hold something older:
    asking the other targets may show it never completed."""
    vs = list(held)
    return sum(v == top for v in vs) < w and any(v is not None and v < top for v in vs)
