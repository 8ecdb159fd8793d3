"""TransferRouter: send each read where it is expected to finish first; hedge, cut, eject, probe.

The storage layer hands the router a list of sources (replica nodes) and an ``attempt``
coroutine function; the router decides where to go, how long to wait and when to try
another source. Each decision lives in its own module, and this one only builds them
from the settings and wires them together:

- sources (``_source``): one record per source name -- cost model (``_model``: windowed
  medians per size class, setup kept out, bandwidth from every read), circuit, lanes --
  and the deadline and hedge delay of an attempt there;
- order (``_order``): by expected time of this request's size at each source, after
  same-host / same-zone preference and circuits;
- fetch (``_fetch``): the loop over one read's sources; past the source's learned p95 the
  next source is tried too (``_hedge``), within a token budget; past its deadline (a
  multiple of the learned p99, with a floor) an attempt is cut and counts as a failure;
- circuit (``_circuit``): consecutive failures, deadline misses and hedge losses eject a
  source, for longer each time (Envoy-style);
- probe (``_probe``): ejected and idle sources get a real small request in the background;
- attempt (``_attempt``): runs one attempt in its lanes and records its outcome; only
  transport errors, checksum mismatches and deadline misses count against a source
  (``_verdict``); a ``KeyError`` is a miss; anything else is re-raised;
- QoS (``_qos``): every attempt holds one slot of its source's lanes and one of the global
  lanes, in the ambient class (:func:`swarmstore.network.qos`).

The parts talk through public methods only: the fetch loop, the runner and the prober are
given the :class:`~swarmstore.network._source.Registry`, never the router.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from swarmstore.errors import NodeUnavailable
from swarmstore.network._attempt import Job, Runner
from swarmstore.network._fetch import Fetcher
from swarmstore.network._hedge import HedgeBudget
from swarmstore.network._model import SourceStats
from swarmstore.network._order import Planner
from swarmstore.network._probe import Prober
from swarmstore.network._qos import _QOS, Lanes
from swarmstore.network._s3 import _kwargs as _s3_kwargs
from swarmstore.network._settings import Settings
from swarmstore.network._source import Registry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from swarmstore.network._circuit import Circuit
    from swarmstore.network._source import Source

__all__ = ["SourceStats", "TransferRouter", "default_router", "reset_default_router"]

logger = logging.getLogger(__name__)


class TransferRouter:
    """Order sources by expected time, fetch from the best one, hedge, cut and fail over.

    Parameters
    ----------
    alpha : float, optional
        Weight of the newest request in the expected-vs-observed figures (``ewma-alpha``).
    hedge, hedge_quantile, hedge_budget, hedge_min_samples
        Hedging on/off, the latency quantile that triggers it, the largest fraction of extra
        requests, and the samples a source needs before its quantile is trusted.
    deadline_factor, deadline_floor, deadline_cold
        An attempt that has another source after it is cut after ``factor`` times its
        source's p99 for that size, at least ``floor`` seconds; ``cold`` for a size never
        measured there (the first request may set up a client).
    circuit_failures, circuit_reset, circuit_reset_max
        Consecutive strikes that eject a source; the ejection time is ``circuit_reset``
        times the number of ejections, capped at ``circuit_reset_max``.
    concurrency, source_concurrency : int, optional
        Slots of the global lanes and of each source's lanes; 0 means unlimited.
    qos : bool
        False puts every request in one FIFO class (same limits, no priorities).
    qos_yield : float, optional
        Fraction of the slots the lowest class may hold while a higher class is active
        (``network.qos-yield``).
    host, zone : str, optional
        Where this router runs; sources with the same ``.host`` / ``.zone`` are preferred.
    probe : callable or bool, optional
        ``await probe(source)`` is a real small request (True: ``source.ping()``, for
        sources that have one). Ejected sources are probed as their trial; sources reads
        skip are probed every ``probe_interval`` scaled by how much slower they are than
        the best, up to ``probe_interval_max``. On by default.
    explore_interval : float, optional
        Without probes: a source untried this long gets one real read.
    clock : callable
        Monotonic clock for circuits, staleness and probes (tests pass a fake one);
        durations are always measured with ``time.perf_counter``.

    Notes
    -----
    All state is per process. Figures and circuits are plain attributes updated under the
    GIL; lanes are thread-safe and serve any event loop, so one router can be shared by
    every store of a worker (see :func:`default_router`).

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
        deadline_factor: float | None = None,
        deadline_floor: float | str | None = None,
        deadline_cold: float | str | None = None,
        circuit_failures: int | None = None,
        circuit_reset: float | str | None = None,
        circuit_reset_max: float | str | None = None,
        concurrency: int | None = None,
        source_concurrency: int | None = None,
        qos: bool = True,
        qos_yield: float | None = None,
        host: str | None = None,
        zone: Any = None,
        topology_slack: float | None = None,
        explore_interval: float | str | None = None,
        probe: Callable[[Any], Awaitable[Any]] | bool | None = None,
        probe_interval: float | str | None = None,
        probe_interval_max: float | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Constructor arguments, so a pickled router rebuilds with the same settings.
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        given = {k: v for k, v in self._init_kwargs.items() if k not in ("qos", "probe", "clock")}
        self.settings = s = Settings.load(qos=qos, probe=probe, **given)
        self.clock = clock
        self.host, self.zone = s.host, s.zone
        self.hedge_quantile, self.hedge_min_samples = s.hedge_quantile, s.hedge_min_samples
        self.classes = list(s.classes)
        self.lanes = Lanes(s.concurrency, self.classes, s.shares, s.yields, s.yield_window)
        self.budget = HedgeBudget(s.hedge_budget)
        self.registry = reg = Registry(s)
        #: per-source cost models, circuits and lanes, by name (the registry's)
        self.sources: dict[str, SourceStats] = reg.stats
        self.circuits: dict[str, Circuit] = reg.circuits
        self.source_lanes: dict[str, Lanes] = reg.lanes
        self.runner = Runner(self.lanes, reg.entry, clock, s.alpha)
        self.prober: Prober | None = None
        if s.probe:
            self.prober = Prober(
                self.runner, reg.entry, reg.deadline, self.classes[-1],
                probe if callable(probe) else True, s.probe_interval, s.probe_interval_max,
            )  # fmt: skip
        explore = None if self.prober is not None else s.explore_interval
        self.planner = Planner(
            s.host, s.zone, s.topology_slack, trials=self.prober is None, explore=explore
        )
        # Deadline cuts: the same rate as hedges, a burst that ejects one hung source.
        cuts = HedgeBudget(s.hedge_budget, max(2, s.circuit_failures + 1), full=True)
        self.fetcher = Fetcher(
            reg, self.planner, self.runner, self.budget, self.prober, s.hedge, cuts
        )

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

    @property
    def hedges(self) -> int:
        """Hedged requests started so far."""
        return self.budget.hedges

    @property
    def hedge(self) -> bool:
        """Whether reads are hedged (settable)."""
        return self.fetcher.hedge

    @hedge.setter
    def hedge(self, on: bool) -> None:
        self.fetcher.hedge = on

    @property
    def fetches(self) -> int:
        """Fetches started so far."""
        return self.fetcher.fetches

    @property
    def failovers(self) -> int:
        """Attempts made after another source of the same fetch had failed."""
        return self.fetcher.failovers

    # --- per-source state --------------------------------------------------------------------
    def _entry(self, name: str) -> Source:
        return self.registry.entry(name)

    def _stats(self, name: str) -> SourceStats:
        return self.registry.entry(name).stats

    def observe(self, name: str, seconds: float, nbytes: int = 0, ok: bool = True) -> None:
        """Fold one finished transfer (measured elsewhere) into ``name``'s figures and circuit."""
        e = self._entry(name)
        e.stats.requests += 1
        if ok:
            e.stats.fold(seconds, nbytes)
            e.circuit.success(self.clock())
        else:
            e.stats.failures += 1
            self.runner.strike(e)

    # --- ordering ----------------------------------------------------------------------------
    def _class(self) -> str:
        if not self.settings.qos:
            return "all"
        cls = _QOS.get()
        return self.settings.default_class if cls is None else cls

    def order[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None = None
    ) -> list[S]:
        """``sources`` in the order :meth:`fetch` tries them (ties keep the caller's order)."""
        size = self.runner.typical if nbytes is None else nbytes
        return self.planner.plan(
            sources, name, self._entry, size, self._class(), self.clock()
        ).sources

    # --- transfers ---------------------------------------------------------------------------
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
        there means that replica lacks the key, a
        :class:`~swarmstore.errors.DeadlineExceeded` that it did not answer in time). An
        exception that says nothing about a source (not a transport error, checksum
        mismatch or ``KeyError``) is raised. ``nbytes``: the expected size of the result,
        if known (sources are ordered by expected time at that size); ``size(result)``:
        the bytes a result moved (default: ``len()`` of a bytes result, or of the first
        item of a tuple result).
        """
        cls = self._class()
        return await self.fetcher.fetch(sources, attempt, name, cls, self.clock(), nbytes, size)

    async def send[S, T](
        self,
        source: S,
        attempt: Callable[[S], Awaitable[T]],
        *,
        name: Callable[[S], str],
        nbytes: int = 0,
        skip_open: bool = False,
    ) -> T:
        """Run one transfer to a fixed target (a write), in a lane; errors propagate.

        Its outcome feeds the target's circuit (not the read cost model). With
        ``skip_open=True`` a target whose circuit is open fails at once with
        :class:`NodeUnavailable` instead of being tried.
        """
        nm = name(source)
        if skip_open:
            circuit = self._entry(nm).circuit
            if not circuit.admits(self.clock()):
                raise NodeUnavailable(f"{nm}: circuit open after repeated failures; not tried")
        job = Job(self.runner, attempt, self._class(), nbytes, fixed=nbytes)
        result: T = await self.runner.run(job, source, nm, None)
        return result

    def s3_config_kwargs(self) -> dict[str, Any]:
        """botocore ``config_kwargs`` for S3 nodes read through this router: the pool as
        large as this router's per-source lanes, no retries (see
        :func:`swarmstore.network.s3_config_kwargs`)."""
        s = self.settings
        return _s3_kwargs(s.source_concurrency, s.s3_connect_timeout, s.s3_read_timeout)

    async def close(self) -> None:
        """Cancel background probes started from this event loop."""
        if self.prober is not None:
            await self.prober.close()

    # --- figures -----------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """Router, per-source and per-class figures as a plain dict (CLI, metrics)."""
        now = self.clock()
        hq = self.hedge_quantile
        sources = {nm: e.figures(now, hq) for nm, e in list(self.registry.entries.items())}
        wins = sum(f["hedge_wins"] for f in sources.values())
        return {
            "host": self.host,
            "zone": self.zone,
            "fetches": self.fetches,
            "hedges": self.hedges,
            "hedges_won": wins,
            "hedge_ratio": self.hedges / self.fetches if self.fetches else 0.0,
            "failovers": self.failovers,
            "deadline_misses": sum(f["deadline_misses"] for f in sources.values()),
            "deadlines_stretched": self.fetcher.stretched,
            "cuts_retried": self.fetcher.recuts,
            "ejections": sum(f["ejections"] for f in sources.values()),
            "probes": self.prober.started if self.prober is not None else 0,
            "concurrency": self.lanes.capacity,
            "classes": self.lanes.figures(),
            "sources": sources,
        }

    stats = figures


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
