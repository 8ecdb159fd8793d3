"""Order: the sources of one request, in the order to try them.

Rows sort as ``(not admitted, tier, expected time, position)``:

- admitted: the source's circuit lets a request through (open circuits go last, as a
  last resort, so a read is never lost to circuit bookkeeping);
- tier: same host as the router, then same zone, then elsewhere -- but a near source that
  is more than ``slack`` times (and 2 ms) slower than the best loses its preference;
- expected time of *this* request's size at that source (:meth:`Source.expected`);
- position in the caller's list, so ties keep the caller's order and sources themselves
  are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from swarmstore.network._source import Source

__all__ = ["Plan", "Planner"]

_SAME_HOST, _SAME_ZONE, _ELSEWHERE = 0, 1, 2
_SLACK_FLOOR = 0.002  # a near source keeps its preference while within 2 ms of the best


@dataclass
class Plan[S]:
    """The sources in order, their records and expected times, and how many are admitted."""

    sources: list[S]
    entries: list[Source]
    expected: list[float]
    admitted: int


class Planner:
    """Orders sources for a router placed at ``host`` / ``zone``.

    ``trials=False`` leaves half-open circuits to the prober: user requests never serve as
    the trial of a source that was ejected. ``explore`` (seconds, or None), used when
    nothing probes: a source untried that long counts as unmeasured, so one real request
    re-measures it.
    """

    def __init__(
        self,
        host: str,
        zone: Any,
        slack: float,
        *,
        trials: bool = True,
        explore: float | None = None,
    ) -> None:
        self.host = host
        self.zone = zone
        self.slack = slack
        self.trials = trials
        self.explore = explore

    def plan[S](
        self,
        sources: Sequence[S],
        name: Callable[[S], str],
        lookup: Callable[[str], Source],
        nbytes: int | None,
        cls: str,
        now: float,
    ) -> Plan[S]:
        if len(sources) == 1:  # nothing to order
            (src,) = sources
            e = lookup(name(src))
            ok = e.circuit.admits(now, self.trials)
            return Plan([src], [e], [0.0], int(ok))
        rows = []
        best = -1.0
        admitted = 0
        tiers = 0  # bit t set: some source is in tier t
        trials, explore, tier_of = self.trials, self.explore, self._tier
        for i, src in enumerate(sources):
            e = lookup(name(src))
            c = e.circuit
            ok = c.opened_at is None or c.admits(now, trials)
            if explore:
                t = self._expected(e, nbytes, cls, now)
            else:
                t = e.expected(nbytes, cls)
            tier = tier_of(src)
            tiers |= 1 << tier
            rows.append((not ok, tier, t, i, src, e))
            if ok:
                admitted += 1
                if best < 0 or t < best:
                    best = t
        if len(rows) > 1:
            if tiers & (tiers - 1) and best > 0:
                rows = self._demote(rows, best)
            rows.sort(key=_key)
        return Plan([r[4] for r in rows], [r[5] for r in rows], [r[2] for r in rows], admitted)

    def _expected(self, e: Source, nbytes: int | None, cls: str, now: float) -> float:
        explore, last = self.explore, e.stats.last_tried
        if explore and last is not None and now - last > explore:
            return 0.0  # stale: worth one real request to measure again
        return e.expected(nbytes, cls)

    def _tier(self, src: Any) -> int:
        h = getattr(src, "host", None)
        if h is not None and h == self.host:
            return _SAME_HOST
        if self.zone is not None and getattr(src, "zone", None) == self.zone:
            return _SAME_ZONE
        return _ELSEWHERE

    def _demote(self, rows: list[Any], best: float) -> list[Any]:
        """A near source that is far slower than the best loses its preference. (With one
        tier for all, demoting changes nothing: the demoted are the slowest anyway.)"""
        slack = self.slack * best
        return [
            (bad, _ELSEWHERE, t, i, src, e)
            if t > slack and t - best > _SLACK_FLOOR
            else (bad, tier, t, i, src, e)
            for bad, tier, t, i, src, e in rows
        ]


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:4]
