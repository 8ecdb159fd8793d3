"""Source: what a router keeps per source name -- cost model, circuit, lanes -- and its figures.

:class:`Registry` makes and holds one :class:`Source` per name, and answers the two
questions every other part asks about a source: its record (``entry``) and how long an
attempt there may run (``deadline``). The order, the fetch loop, the runner and the prober
are each given the registry, never the router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmstore.network._circuit import Circuit
from swarmstore.network._model import SourceStats, size_class
from swarmstore.network._pace import Pacer
from swarmstore.network._qos import Lanes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from swarmstore.network._settings import Settings

__all__ = ["UNKNOWN", "Registry", "Source"]

#: expected time of a size class never measured at a source, while one request measures it
UNKNOWN = 1e9


class Source:
    """The per-source record, looked up once per attempt."""

    __slots__ = ("circuit", "exploring", "lanes", "name", "pacer", "stats")

    def __init__(self, name: str, stats: SourceStats, circuit: Circuit, lanes: Lanes) -> None:
        self.name = name
        self.stats = stats
        self.circuit = circuit
        self.lanes = lanes
        self.exploring: set[int] = set()  #: size classes being measured for the first time
        #: the yielding classes' in-flight limit, paced by how much reads here queue
        self.pacer = Pacer(lanes.capacity) if lanes.capacity and lanes.limits else None
        if self.pacer is not None:
            lanes.pace(self.pacer.limit)

    def paced(self, seconds: float, nbytes: int, kind: str = "read") -> None:
        """Fold one request into the pacer; a new limit goes to the lanes."""
        p, lanes = self.pacer, self.lanes
        if p is None:
            return
        before = p.limit
        waiting = any(lanes.queued(c) for c in lanes.limits)
        if p.observe(seconds, nbytes, waiting=waiting, kind=kind) != before:
            lanes.pace(p.limit)

    def __repr__(self) -> str:
        return f"Source({self.name!r}, {self.stats!r}, {self.circuit!r})"

    def expected(self, nbytes: int | None, cls: str) -> float:
        """Expected seconds of a request of ``nbytes`` in class ``cls`` here.

        Its cost model, plus its queue when its lanes have no slot free to ``cls``. A size
        class never measured costs 0 (try it: that measures it) unless a request is already
        measuring it, then :data:`UNKNOWN` (after every measured source).
        """
        t = self.stats.expected(nbytes)
        if t is None:
            return UNKNOWN if size_class(nbytes) in self.exploring else 0.0
        lanes = self.lanes
        cap = lanes.capacity
        # Fast path: slots enough are free that no reserve above ``cls`` stands in the way.
        if cap and (
            lanes.queued() or cls in lanes.limits or cap - lanes.busy() <= lanes.reserve_above(cls)
        ):
            ahead = lanes.would_queue(cls)
            t += ahead / cap * t
        return t

    def figures(self, now: float, hedge_quantile: float) -> dict[str, Any]:
        """This source's figures as a plain dict (ms, MB/s, counts, circuit state)."""
        st, c, ln = self.stats, self.circuit, self.lanes
        ranked = sorted(st.samples)  # every size class together, as the metrics show them
        p50, p95, p99 = (_rank(ranked, q) for q in (0.5, hedge_quantile, 0.99))
        bw, lat = st.bandwidth, st.latency
        return {
            "latency_ms": _ms(lat),
            "p50_ms": _ms(p50),
            "p95_ms": _ms(p95),
            "p99_ms": _ms(p99),
            "bandwidth_MBps": None if bw is None else bw / 1e6,
            "expected_ms": _ms(st.predicted),
            "observed_ms": _ms(st.observed),
            "size_classes": sorted(st.classes),
            "requests": st.requests,
            "failures": st.failures,
            "deadline_misses": st.deadline_misses,
            "missing": st.missing,
            "hedges": st.hedges,
            "hedge_wins": st.hedge_wins,
            "cancelled": st.cancelled,
            "probes": st.probes,
            "setups": st.setups,
            "circuit": c.state(now),
            "consecutive_failures": c.consecutive,
            "ejections": c.opened,
            "ejection_s": c.reset if c.opened_at is not None else 0.0,
            "in_flight": ln.busy(),
            "paced_limit": None if self.pacer is None else self.pacer.limit,
            "queued": ln.queued(),
            "idle_s": None if st.last_tried is None else now - st.last_tried,
        }


class Registry:
    """One :class:`Source` per name, made on first use from the router's settings.

    ``stats``, ``circuits`` and ``lanes`` map names to each source's parts (the router
    exposes them as ``sources``, ``circuits`` and ``source_lanes``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.entries: dict[str, Source] = {}
        self.stats: dict[str, SourceStats] = {}
        self.circuits: dict[str, Circuit] = {}
        self.lanes: dict[str, Lanes] = {}

    def entry(self, name: str) -> Source:
        """The record of source ``name`` (made with fresh figures the first time)."""
        e = self.entries.get(name)
        if e is None:
            s = self.settings
            stats = self.stats.setdefault(name, SourceStats())
            circuit = Circuit(s.circuit_failures, s.circuit_reset, s.circuit_reset_max)
            lanes = Lanes(s.source_concurrency, s.classes, s.shares, s.yields, s.yield_window)
            self.circuits[name], self.lanes[name] = circuit, lanes
            e = self.entries[name] = Source(name, stats, circuit, lanes)
        return e

    def deadline(self, e: Source, nbytes: int | None) -> float:
        """Seconds an attempt of ``nbytes`` at ``e`` may run before it counts as a failure."""
        s = self.settings
        return e.stats.deadline(nbytes, s.deadline_factor, s.deadline_floor, s.deadline_cold)

    def hedge_delay(self, e: Source, rest: Sequence[Source], nbytes: int | None) -> float | None:
        """Seconds after which an attempt at ``e`` counts as slow, or None if unknown.

        A source without enough samples of this size is judged by the best of the others.
        """
        q, n = self.settings.hedge_quantile, self.settings.hedge_min_samples
        own = e.stats.quantile(q, n, nbytes)
        if own is not None:
            return own
        known = [x for x in (o.stats.quantile(q, n, nbytes) for o in rest) if x is not None]
        return min(known, default=None)


def _rank(ranked: list[float], q: float) -> float | None:
    return ranked[min(len(ranked) - 1, int(q * len(ranked)))] if ranked else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
