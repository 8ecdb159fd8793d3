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
import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from swarmstore import config
from swarmstore.errors import ConfigError, NodeUnavailable
from swarmstore.network._circuit import Circuit
from swarmstore.network._probe import Prober
from swarmstore.network._qos import Lanes, current_qos, qos_classes
from swarmstore.network._race import _Race
from swarmstore.network._stats import SourceStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

__all__ = ["SourceStats", "TransferRouter", "default_router", "reset_default_router"]

logger = logging.getLogger(__name__)

_SAME_HOST, _SAME_ZONE, _ELSEWHERE = 0, 1, 2
_MIN_HEDGE_DELAY = 0.0005
_SLACK_FLOOR = 0.002  # a near source keeps its preference while within 2 ms of the best


def _cfg(value: Any, key: str) -> Any:
    return config.get(f"network.{key}") if value is None else value


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
    every store of a worker.

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
        self.shares = dict(config.get("network.qos-shares") or {}) if qos else {}
        cap = int(_cfg(concurrency, "concurrency") or 0)
        self.source_concurrency = int(_cfg(source_concurrency, "source-concurrency") or 0) or None
        self.lanes = Lanes(cap or None, self.classes, self.shares)

        self.sources: dict[str, SourceStats] = {}
        self.circuits: dict[str, Circuit] = {}
        self.source_lanes: dict[str, Lanes] = {}
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

    def observe(self, name: str, seconds: float, nbytes: int = 0, ok: bool = True) -> None:
        """Fold one finished transfer into ``name``'s figures and circuit."""
        st = self._stats(name)
        st.requests += 1
        if not ok:
            st.failures += 1
            if self._circuit(name).failure(self.clock()):
                logger.info("Circuit of %s opened after %d failures", name, self.circuit_failures)
            return
        st.fold(seconds, nbytes, self.alpha)
        circuit = self._circuit(name)
        if circuit.opened_at is not None:
            logger.info("Circuit of %s closed", name)
        circuit.success()

    # --- ordering ----------------------------------------------------------------------------
    def _tier(self, src: Any) -> int:
        host = getattr(src, "host", None)
        if host is not None and host == self.host:
            return _SAME_HOST
        zone = getattr(src, "zone", None)
        if zone is not None and zone == self.zone:
            return _SAME_ZONE
        return _ELSEWHERE

    def _is_stale(self, st: SourceStats, now: float) -> bool:
        return bool(
            self.explore_interval
            and st.last_tried is not None
            and now - st.last_tried > self.explore_interval
        )

    def _expected(self, name: str, nbytes: int | None, now: float) -> float:
        st = self._stats(name)
        if self._is_stale(st, now):
            return 0.0  # stale: worth one real request to measure again
        t = st.expected(nbytes)
        lanes = self.source_lanes.get(name)
        if lanes is not None and lanes.capacity:
            waiting = lanes.busy() + lanes.queued() + 1 - lanes.capacity
            t += max(0, waiting) / lanes.capacity * (st.latency or 0.0)
        return t

    def _plan[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None
    ) -> tuple[list[S], int]:
        """Sources in the order to try them, and how many lead with an admitting circuit."""
        now = self.clock()
        rows = []
        for i, src in enumerate(sources):
            nm = name(src)
            rows.append(
                (
                    src,
                    self._circuit(nm).admits(now),
                    self._tier(src),
                    self._expected(nm, nbytes, now),
                    i,
                )
            )
        admitted = [r for r in rows if r[1]]
        best = min((r[3] for r in admitted), default=0.0)
        slack = self.topology_slack * best

        def key(row: tuple[Any, bool, int, float, int]) -> tuple[bool, int, float, int]:
            _, ok, tier, t, i = row
            if best > 0 and t > slack and t - best > _SLACK_FLOOR:
                tier = _ELSEWHERE  # a near source that is far slower loses its preference
            return (not ok, tier, t, i)

        rows.sort(key=key)
        return [r[0] for r in rows], len(admitted)

    def order[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None = None
    ) -> list[S]:
        """``sources`` in the order :meth:`fetch` tries them (ties keep the caller's order)."""
        return self._plan(sources, name, nbytes)[0]

    # --- transfers ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _slot(self, nm: str, cls: str) -> AsyncIterator[None]:
        # The source's lanes first: a request queued at a busy source holds no global slot.
        async with self._source_lanes(nm).slot(cls), self.lanes.slot(cls):
            yield

    def _class(self) -> str:
        return current_qos() if self.qos else "all"

    async def _attempt[S, T](
        self,
        src: S,
        attempt: Callable[[S], Awaitable[T]],
        nm: str,
        size: Callable[[T], int] | None,
        started: dict[str, float],
        cls: str | None = None,
    ) -> T:
        """One attempt inside a lane slot, with its outcome folded into the figures."""
        async with self._slot(nm, cls or self._class()):
            st = self._stats(nm)
            circuit = self._circuit(nm)
            st.last_tried = self.clock()
            circuit.begin(st.last_tried)
            started[nm] = t0 = time.perf_counter()
            try:
                result = await attempt(src)
            except KeyError:
                st.requests += 1
                st.missing += 1
                circuit.abandon()
                raise
            except asyncio.CancelledError:
                st.cancelled += 1
                st.floor(time.perf_counter() - t0, self.alpha)
                circuit.abandon()
                raise
            except Exception:
                self.observe(nm, time.perf_counter() - t0, ok=False)
                raise
            self.observe(nm, time.perf_counter() - t0, size(result) if size is not None else 0)
            return result

    def _hedge_delay(
        self, first: str, others: list[str], nbytes: int | None, own: bool = True
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
        return max(q, _MIN_HEDGE_DELAY)

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
        self._tokens = min(self._tokens + self.hedge_budget, 1 + 20 * self.hedge_budget)
        ordered, admitted = self._plan(sources, name, nbytes)
        if self.prober is not None:
            self.prober.maybe(ordered[1:], name)  # the first is measured by the read itself
        if not self.hedge or self._tokens < 1 or admitted < 2:
            return await self._one_by_one(ordered, attempt, name, size)  # no hedge possible
        now = self.clock()
        measured = {
            name(s)
            for s in ordered
            if self._stats(name(s)).latency is not None
            and not self._is_stale(self._stats(name(s)), now)
        }
        race = _Race(self, ordered, admitted, measured, attempt, name, nbytes, size)
        return await race.run()

    async def _one_by_one[S, T](
        self,
        ordered: list[S],
        attempt: Callable[[S], Awaitable[T]],
        name: Callable[[S], str],
        size: Callable[[T], int] | None,
    ) -> tuple[S | None, T | None, dict[S, BaseException]]:
        """Plain failover in order, without a task per attempt (the common, cheap path)."""
        failures: dict[S, BaseException] = {}
        for src in ordered:
            if failures:
                self.failovers += 1
            try:
                return src, await self._attempt(src, attempt, name(src), size, {}), failures
            except Exception as e:
                failures[src] = e
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
        if skip_open and not self._circuit(nm).admits(self.clock()):
            raise NodeUnavailable(f"{nm}: circuit open after repeated failures; not tried")
        return await self._attempt(source, attempt, nm, lambda _: nbytes, {})

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
