"""TransferRouter: pick the source with the lowest expected transfer time, hedge, break circuits.

The storage layer hands the router a list of sources (replica nodes) and an ``attempt``
coroutine function; the router decides where to go and when to try a second source:

- order: sources whose circuit admits a request first, then same host, same zone, then by
  expected time (EWMA latency + extra bytes / bandwidth + queueing at the source's lane);
- hedge: when the first attempt runs past the learned p95 of that source, start the next
  source too, keep the first success and cancel the other; a token bucket keeps hedges
  within ``hedge-budget`` of all fetches;
- circuits: ``circuit-failures`` consecutive failures open a source's circuit; it is skipped
  while any admitted source remains and retried half-open after ``circuit-reset``;
- QoS: every attempt holds one slot of the global lanes and one of its source's lanes, in
  the ambient class (:func:`swarmstore.network.qos`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from swarmstore import config
from swarmstore.errors import ConfigError, NodeUnavailable
from swarmstore.network._circuit import Circuit
from swarmstore.network._probe import Prober
from swarmstore.network._qos import _QOS, Lanes, qos_classes
from swarmstore.network._race import _Hedge, _Watch
from swarmstore.network._stats import SourceStats

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

__all__ = ["SourceStats", "TransferRouter", "default_router", "reset_default_router"]

logger = logging.getLogger(__name__)

_SAME_HOST, _SAME_ZONE, _ELSEWHERE = 0, 1, 2
_MIN_HEDGE_DELAY = 0.0005
_SLACK_FLOOR = 0.002  # a near source keeps its preference while within 2 ms of the best


def _cfg(value: Any, key: str) -> Any:
    return config.get(f"network.{key}") if value is None else value


class _Source:
    """What the router keeps per source name, looked up once per attempt."""

    __slots__ = ("circuit", "lanes", "stats")

    def __init__(self, stats: SourceStats, circuit: Circuit, lanes: Lanes) -> None:
        self.stats = stats
        self.circuit = circuit
        self.lanes = lanes


class TransferRouter:
    """Order sources by expected time, fetch from the best one, hedge and fail over.

    Parameters
    ----------
    alpha : float, optional
        Weight of the newest observation in the EWMAs (``network.ewma-alpha``).
    hedge, hedge_quantile, hedge_budget, hedge_min_samples
        Hedging on/off, the latency quantile that triggers it, the largest fraction of extra
        requests, and the samples a source needs before its quantile is trusted.
    circuit_failures, circuit_reset
        Consecutive failures that open a circuit; seconds before a half-open retry.
    concurrency, source_concurrency : int, optional
        Slots of the global lanes and of each source's lanes; 0 means unlimited.
    qos : bool
        False puts every request in one FIFO class (same limits, no priorities).
    host, zone : str, optional
        Where this router runs; sources with the same ``.host`` / ``.zone`` are preferred.
        The host defaults to this machine's hostname.
    probe : callable or bool, optional
        ``await probe(source)`` measures an idle source (True: call ``source.ping()``);
        sources untried for ``probe_interval`` seconds and half-open circuits are probed in
        the background, one at a time, in the ``bulk`` class. Off by default.
    clock : callable
        Monotonic clock for circuits, staleness and probes (tests pass a fake one);
        durations are always measured with ``time.perf_counter``.

    Notes
    -----
    All state is per process. Figures and circuits are plain attributes updated under the
    GIL; lanes are thread-safe and serve any event loop, so one router can be shared by
    every store of a worker. The QoS class of a transfer is the innermost
    :func:`~swarmstore.network.qos` block, else ``network.qos-default`` as it was when the
    router was built.

    The common path is kept cheap: a free lane slot is taken without awaiting, and a
    hedgeable fetch runs its first attempt in the caller's task with a timer armed; only
    when the timer finds the attempt late does a second task start (see ``_race.py``).

    Examples
    --------
    >>> import asyncio
    >>> router = TransferRouter(hedge=False)
    >>> async def attempt(src):
    ...     if src == "down":
    ...         raise ConnectionError(src)
    ...     return src.upper()
    >>> src, result, failures = asyncio.run(router.fetch(["down", "up"], attempt, name=str))
    >>> src, result, list(failures)
    ('up', 'UP', ['down'])
    """

    def __init__(
        self,
        alpha: float | None = None,
        *,
        hedge: bool | None = None,
        hedge_quantile: float | None = None,
        hedge_budget: float | None = None,
        hedge_min_samples: int | None = None,
        circuit_failures: int | None = None,
        circuit_reset: float | str | None = None,
        concurrency: int | None = None,
        source_concurrency: int | None = None,
        qos: bool = True,
        host: str | None = None,
        zone: Any = None,
        topology_slack: float | None = None,
        explore_interval: float | str | None = None,
        probe: Callable[[Any], Awaitable[Any]] | bool | None = None,
        probe_interval: float | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Constructor arguments, so a pickled router rebuilds with the same settings.
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.alpha = float(_cfg(alpha, "ewma-alpha"))
        self.hedge = bool(_cfg(hedge, "hedge"))
        self.hedge_quantile = float(_cfg(hedge_quantile, "hedge-quantile"))
        self.hedge_budget = float(_cfg(hedge_budget, "hedge-budget"))
        self.hedge_min_samples = int(_cfg(hedge_min_samples, "hedge-min-samples"))
        self.circuit_failures = int(_cfg(circuit_failures, "circuit-failures"))
        self.circuit_reset = config.get_seconds("network.circuit-reset", circuit_reset) or 0.0
        self.explore_interval = config.get_seconds("network.explore-interval", explore_interval)
        self.topology_slack = float(_cfg(topology_slack, "topology-slack"))
        self.host = _cfg(host, "host") or socket.gethostname()
        self.zone = _cfg(zone, "zone")
        if not 0 <= self.hedge_budget <= 1 or not 0 < self.hedge_quantile < 1:
            raise ConfigError("network.hedge-budget must be in [0, 1], hedge-quantile in (0, 1)")
        if probe is None:
            probe = bool(config.get("network.probe"))
        interval = config.get_seconds("network.probe-interval", probe_interval) or 0.0
        probe_fn = _ping if probe is True else (probe or None)
        self.prober = Prober(self, probe_fn, interval) if probe_fn is not None else None
        self.clock = clock

        self.qos = qos
        self.classes = qos_classes() if qos else ["all"]
        self.default_class = str(config.get("network.qos-default")) if qos else "all"
        self.shares = dict(config.get("network.qos-shares") or {}) if qos else {}
        cap = int(_cfg(concurrency, "concurrency") or 0)
        self.source_concurrency = int(_cfg(source_concurrency, "source-concurrency") or 0) or None
        self.lanes = Lanes(cap or None, self.classes, self.shares)

        self.sources: dict[str, SourceStats] = {}
        self.circuits: dict[str, Circuit] = {}
        self.source_lanes: dict[str, Lanes] = {}
        self._entries: dict[str, _Source] = {}
        self._watch: _Watch | None = None  # the hedge watch of the loop used last
        self.fetches = 0
        self.hedges = 0
        self.failovers = 0
        self._tokens = 0.0

    def __reduce__(self) -> Any:
        """Pickle the settings, not the figures: the process default stays the default there."""
        if self is _DEFAULT.get("router"):
            return (default_router, ())
        return (_rebuild, (type(self), self._init_kwargs))

    def __repr__(self) -> str:
        return (
            f"TransferRouter(host={self.host!r}, zone={self.zone!r}, hedge={self.hedge}, "
            f"sources={len(self.sources)}, lanes={self.lanes!r})"
        )

    # --- per-source state --------------------------------------------------------------------
    def _stats(self, name: str) -> SourceStats:
        st = self.sources.get(name)
        if st is None:
            st = self.sources[name] = SourceStats()
        return st

    def _circuit(self, name: str) -> Circuit:
        c = self.circuits.get(name)
        if c is None:
            c = self.circuits[name] = Circuit(self.circuit_failures, self.circuit_reset)
        return c

    def _source_lanes(self, name: str) -> Lanes:
        lanes = self.source_lanes.get(name)
        if lanes is None:
            lanes = Lanes(self.source_concurrency, self.classes, self.shares)
            self.source_lanes[name] = lanes
        return lanes

    def _entry(self, name: str) -> _Source:
        e = self._entries.get(name)
        if e is None:
            e = _Source(self._stats(name), self._circuit(name), self._source_lanes(name))
            self._entries[name] = e
        return e

    def observe(self, name: str, seconds: float, nbytes: int = 0, ok: bool = True) -> None:
        """Fold one finished transfer into ``name``'s figures and circuit."""
        self._fold(self._stats(name), self._circuit(name), name, seconds, nbytes, ok)

    def _fold(
        self, st: SourceStats, circuit: Circuit, name: str, seconds: float, nbytes: int, ok: bool
    ) -> None:
        st.requests += 1
        if not ok:
            st.failures += 1
            if circuit.failure(self.clock()):
                logger.info("Circuit of %s opened after %d failures", name, self.circuit_failures)
            return
        st.fold(seconds, nbytes, self.alpha)
        if circuit.opened_at is not None:
            logger.info("Circuit of %s closed", name)
        if circuit.consecutive or circuit.opened_at is not None or circuit.trial:
            circuit.success()

    # --- ordering ----------------------------------------------------------------------------
    def _is_stale(self, st: SourceStats, now: float) -> bool:
        return bool(
            self.explore_interval
            and st.last_tried is not None
            and now - st.last_tried > self.explore_interval
        )

    def _expected(self, name: str, nbytes: int | None, now: float) -> float:
        return self._expect(self._entry(name), nbytes, now, self._class())

    def _expect(self, e: _Source, nbytes: int | None, now: float, cls: str) -> float:
        """Expected seconds of a request of ``nbytes`` in class ``cls`` to ``e``: its
        figures, plus its queue when the source's lanes have no slot free to ``cls``."""
        st = e.stats
        latency = st.latency
        if latency is None:
            return 0.0  # never measured: tried first so it gets measured
        explore = self.explore_interval
        if explore and st.last_tried is not None and now - st.last_tried > explore:
            return 0.0  # stale: worth one real request to measure again
        t = latency
        if nbytes and st.bandwidth and st.size is not None and nbytes > st.size:
            t += (nbytes - st.size) / st.bandwidth
        lanes = e.lanes
        cap = lanes.capacity
        # Fast path: slots enough are free that no reserve above ``cls`` can stand in its way.
        if cap and (lanes._queued or cap - lanes._busy <= lanes._above.get(cls, 0)):
            ahead = lanes.would_queue(cls) if cls in lanes.in_use else 0
            t += ahead / cap * latency
        return t

    def _plan[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None
    ) -> tuple[list[S], int]:
        """Sources in the order to try them, and how many lead with an admitting circuit.

        Rows sort as ``(not admitted, tier, expected time, position)``; the position is
        unique, so sources themselves are never compared. (A subclass may override this
        to order sources some other way, as ``benchmarks/bench_network.py`` does.)
        """
        cls = self._class()
        now = self.clock()
        entries, host, zone = self._entries, self.host, self.zone
        rows = []
        best = -1.0
        admitted = 0
        tiers = 0  # bit t set: some source is in tier t
        i = 0
        for src in sources:
            nm = name(src)
            e = entries.get(nm) or self._entry(nm)
            c = e.circuit
            ok = c.opened_at is None or c.admits(now)
            t = 0.0 if e.stats.latency is None else self._expect(e, nbytes, now, cls)
            tier = _ELSEWHERE
            h = getattr(src, "host", None)
            if h is not None and h == host:
                tier = _SAME_HOST
            elif zone is not None and getattr(src, "zone", None) == zone:
                tier = _SAME_ZONE
            tiers |= 1 << tier
            rows.append((not ok, tier, t, i, src))
            i += 1
            if ok:
                admitted += 1
                if best < 0 or t < best:
                    best = t
        if i < 2:
            return [r[4] for r in rows], admitted
        if tiers & (tiers - 1) and best > 0:
            # A near source that is far slower loses its preference. With one tier for all,
            # demoting changes nothing: the demoted are the slowest anyway.
            slack = self.topology_slack * best
            rows = [
                (bad, _ELSEWHERE, t, i, src)
                if t > slack and t - best > _SLACK_FLOOR
                else (bad, tier, t, i, src)
                for bad, tier, t, i, src in rows
            ]
        rows.sort()
        return [r[4] for r in rows], admitted

    def order[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None = None
    ) -> list[S]:
        """``sources`` in the order :meth:`fetch` tries them (ties keep the caller's order)."""
        return self._plan(sources, name, nbytes)[0]

    # --- transfers ---------------------------------------------------------------------------
    def _class(self) -> str:
        if not self.qos:
            return "all"
        cls = _QOS.get()
        return self.default_class if cls is None else cls

    async def _attempt[S, T](
        self,
        src: S,
        attempt: Callable[[S], Awaitable[T]],
        nm: str,
        size: Callable[[T], int] | None,
        cls: str,
        nbytes: int = 0,
        race: _Hedge[Any, Any] | None = None,
    ) -> T:
        """One attempt inside a lane slot, with its outcome folded into the figures.

        It holds a slot of the source's lanes, then one of the global lanes (a request
        queued at a busy source holds no global slot); a free slot is taken without
        awaiting. ``race``, when given, learns when the request itself started.
        """
        e = self._entries.get(nm) or self._entry(nm)
        own = e.lanes
        if not own.try_acquire(cls):
            await own.acquire(cls)
        try:
            lanes = self.lanes
            if not lanes.try_acquire(cls):
                await lanes.acquire(cls)
            try:
                st, circuit = e.stats, e.circuit
                st.last_tried = now = self.clock()
                if circuit.opened_at is not None:
                    circuit.begin(now)
                t0 = time.perf_counter()
                if race is not None:
                    race.t0 = t0
                try:
                    result = await attempt(src)
                except BaseException as exc:
                    self._failed(e, nm, time.perf_counter() - t0, exc)
                    raise
                seconds = time.perf_counter() - t0
                nbytes = size(result) if size is not None else nbytes
                self._fold(st, circuit, nm, seconds, nbytes, True)
                return result
            finally:
                lanes.release(cls)
        finally:
            own.release(cls)

    def _failed(self, e: _Source, nm: str, seconds: float, exc: BaseException) -> None:
        """Record an attempt that raised: missing key, cancelled (a hedge loser) or failed."""
        st, circuit = e.stats, e.circuit
        if isinstance(exc, KeyError):  # the replica lacks the key: no verdict on its health
            st.requests += 1
            st.missing += 1
            circuit.abandon()
        elif isinstance(exc, asyncio.CancelledError):  # it took at least this long
            st.cancelled += 1
            st.floor(seconds, self.alpha)
            circuit.abandon()
        elif isinstance(exc, Exception):
            self._fold(st, circuit, nm, seconds, 0, False)

    def _hedge_delay(
        self, first: str, others: Iterable[str], nbytes: int | None, own: bool = True
    ) -> float | None:
        """Seconds after which a request to ``first`` counts as slow, or None if unknown.

        ``own=False`` (a source tried to re-measure it) uses the best quantile of the others.
        """
        st = self._stats(first)
        q = st.quantile(self.hedge_quantile, self.hedge_min_samples) if own else None
        if q is None:
            known = (
                self._stats(o).quantile(self.hedge_quantile, self.hedge_min_samples) for o in others
            )
            q = min((k for k in known if k is not None), default=None)
            if q is None:
                return None
        elif nbytes and st.bandwidth and st.size is not None and nbytes > st.size:
            q += (nbytes - st.size) / st.bandwidth
        return q if q > _MIN_HEDGE_DELAY else _MIN_HEDGE_DELAY

    def _delay[S](
        self, nm: str, rest: Sequence[S], name: Callable[[S], str], nbytes: int | None
    ) -> float | None:
        """The hedge delay of an attempt at ``nm`` with ``rest`` left to try."""
        st = self._stats(nm)
        last, explore = st.last_tried, self.explore_interval
        own = st.latency is not None and not (
            explore and last is not None and self.clock() - last > explore
        )
        return self._hedge_delay(nm, map(name, rest), nbytes, own)

    def _take_hedge_token(self) -> bool:
        if self._tokens < 1:
            return False
        self._tokens -= 1
        self.hedges += 1
        return True

    async def fetch[S, T](
        self,
        sources: Sequence[S],
        attempt: Callable[[S], Awaitable[T]],
        *,
        name: Callable[[S], str],
        nbytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> tuple[S | None, T | None, dict[S, BaseException]]:
        """Run ``attempt`` on the best source, hedging and failing over until one succeeds.

        Returns ``(source, result, failures)``; ``source`` is None when every source
        failed, and ``failures`` maps each failed source to its exception (a ``KeyError``
        there means that replica lacks the key). A hedged loser is cancelled, not a failure.
        """
        self.fetches += 1
        # Each fetch earns ``hedge_budget`` of a hedge; a small cap bounds bursts.
        tokens = self._tokens + self.hedge_budget
        cap = 1 + 20 * self.hedge_budget
        self._tokens = tokens = tokens if tokens < cap else cap
        ordered, admitted = self._plan(sources, name, nbytes)
        if self.prober is not None:
            self.prober.maybe(ordered[1:], name)  # the first is measured by the read itself
        cls = self._class()
        # One hedge decision per fetch, for an attempt whose next source admits requests;
        # outside a task (a bare coroutine) there is none.
        task = None
        if self.hedge and tokens >= 1 and admitted >= 2:
            task = asyncio.current_task()
        failures: dict[S, BaseException] = {}
        i, n = 0, len(ordered)
        while i < n:
            src = ordered[i]
            i += 1
            if failures:
                self.failovers += 1
            nm = name(src)
            delay = None
            if task is not None and i < admitted:
                delay = self._delay(nm, ordered[i:], name, nbytes)
            if delay is None:
                try:
                    return src, await self._attempt(src, attempt, nm, size, cls), failures
                except Exception as e:
                    failures[src] = e
                    continue
            assert task is not None
            race = _Hedge(self, task, delay, ordered[i], attempt, name, size, cls)
            won = await race.run(src, nm, failures)
            if won is not None:
                return won[0], won[1], failures
            if race.fired:
                task = None
            if race.hedge is not None:
                i += 1  # the hedge's source was tried too, and failed
        return None, None, failures

    async def send[S, T](
        self,
        source: S,
        attempt: Callable[[S], Awaitable[T]],
        *,
        name: Callable[[S], str],
        nbytes: int = 0,
        skip_open: bool = False,
    ) -> T:
        """Run one transfer to a fixed target (a write), recording its figures; errors propagate.

        With ``skip_open=True`` a target whose circuit is open fails at once with
        :class:`NodeUnavailable` instead of being tried.
        """
        nm = name(source)
        if skip_open:
            circuit = self._entry(nm).circuit
            if circuit.opened_at is not None and not circuit.admits(self.clock()):
                raise NodeUnavailable(f"{nm}: circuit open after repeated failures; not tried")
        return await self._attempt(source, attempt, nm, None, self._class(), nbytes)

    async def close(self) -> None:
        """Cancel background probes started from this event loop."""
        if self.prober is not None:
            await self.prober.close()

    # --- figures -----------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """Per-source figures and per-class lane figures as a plain dict (for the CLI)."""
        now = self.clock()
        sources = {}
        for nm, st in self.sources.items():
            lanes = self.source_lanes.get(nm)
            circuit = self._circuit(nm)
            p50, p95 = st.quantile(0.5), st.quantile(self.hedge_quantile)
            sources[nm] = {
                "latency_ms": None if st.latency is None else st.latency * 1e3,
                "p50_ms": None if p50 is None else p50 * 1e3,
                "p95_ms": None if p95 is None else p95 * 1e3,
                "bandwidth_MBps": None if st.bandwidth is None else st.bandwidth / 1e6,
                "requests": st.requests,
                "failures": st.failures,
                "missing": st.missing,
                "hedges": st.hedges,
                "hedge_wins": st.hedge_wins,
                "cancelled": st.cancelled,
                "circuit": circuit.state(now),
                "consecutive_failures": circuit.consecutive,
                "in_flight": lanes.busy() if lanes else 0,
                "queued": lanes.queued() if lanes else 0,
                "idle_s": None if st.last_tried is None else now - st.last_tried,
            }
        return {
            "host": self.host,
            "zone": self.zone,
            "fetches": self.fetches,
            "hedges": self.hedges,
            "hedge_ratio": self.hedges / self.fetches if self.fetches else 0.0,
            "failovers": self.failovers,
            "concurrency": self.lanes.capacity,
            "classes": self.lanes.figures(),
            "sources": sources,
        }

    stats = figures


async def _ping(src: Any) -> None:
    await src.ping()


_DEFAULT: dict[str, TransferRouter] = {}
_DEFAULT_LOCK = threading.Lock()


def default_router() -> TransferRouter:
    """The router shared by everything in this process that was given no router of its own.

    One router per process means one concurrency budget and one set of figures per
    worker, whatever the number of stores (a store unpickled for each Dask task included).
    It is built from config on first use. Sources are known by name, so two different
    nodes must not share a name within one process.
    """
    router = _DEFAULT.get("router")
    if router is None:
        with _DEFAULT_LOCK:
            router = _DEFAULT.get("router")
            if router is None:
                router = _DEFAULT["router"] = TransferRouter()
    return router


def reset_default_router() -> None:
    """Forget the process default router (tests; after changing ``swarmstore.network`` config)."""
    with _DEFAULT_LOCK:
        _DEFAULT.pop("router", None)


def _rebuild(cls: type[TransferRouter], kwargs: dict[str, Any]) -> TransferRouter:
    return cls(**kwargs)
