"""TransferRouter: pick the source with the lowest expected transfer time.

Minimal first version (sequential failover in order of expected time, EWMA
latency/bandwidth per source). Hedging, circuit breaking, probes and topology
preferences extend this class; the ``fetch`` signature is the contract the
storage layer relies on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

__all__ = ["SourceStats", "TransferRouter"]


@dataclass
class SourceStats:
    """Observed figures of one source."""

    latency: float | None = None  # EWMA seconds of fixed cost per request
    bandwidth: float | None = None  # EWMA bytes/second
    requests: int = 0
    failures: int = 0

    def expected(self, nbytes: int | None) -> float:
        if self.latency is None:
            return 0.0  # unknown sources are tried first so they get measured
        t = self.latency
        if nbytes and self.bandwidth:
            t += nbytes / self.bandwidth
        return t


class TransferRouter:
    """Order sources by expected time and fetch from the best one, failing over on error."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.stats: dict[str, SourceStats] = {}

    def _stats(self, name: str) -> SourceStats:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = SourceStats()
        return st

    def observe(self, name: str, seconds: float, nbytes: int = 0, ok: bool = True) -> None:
        """Fold one finished transfer into ``name``'s figures."""
        st = self._stats(name)
        st.requests += 1
        if not ok:
            st.failures += 1
            return
        a = self.alpha
        st.latency = seconds if st.latency is None else (1 - a) * st.latency + a * seconds
        if nbytes > 0 and seconds > 0:
            bw = nbytes / seconds
            st.bandwidth = bw if st.bandwidth is None else (1 - a) * st.bandwidth + a * bw

    def order[S](
        self, sources: Sequence[S], name: Callable[[S], str], nbytes: int | None = None
    ) -> list[S]:
        """``sources`` sorted by expected time (stable: ties keep the caller's preference)."""
        return sorted(sources, key=lambda s: self._stats(name(s)).expected(nbytes))

    async def fetch[S, T](
        self,
        sources: Sequence[S],
        attempt: Callable[[S], Awaitable[T]],
        *,
        name: Callable[[S], str],
        nbytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> tuple[S | None, T | None, dict[S, BaseException]]:
        """Run ``attempt`` on the best source, then the next, until one succeeds.

        Returns ``(source, result, failures)``; ``source`` is None when every source
        failed, and ``failures`` maps each failed source to its exception.
        """
        failures: dict[S, BaseException] = {}
        for src in self.order(sources, name, nbytes):
            t0 = time.perf_counter()
            try:
                result = await attempt(src)
            except Exception as e:
                self.observe(name(src), time.perf_counter() - t0, ok=False)
                failures[src] = e
                continue
            n = size(result) if size is not None else 0
            self.observe(name(src), time.perf_counter() - t0, n)
            return src, result, failures
        return None, None, failures

    async def send[S, T](
        self,
        source: S,
        attempt: Callable[[S], Awaitable[T]],
        *,
        name: Callable[[S], str],
        nbytes: int = 0,
    ) -> T:
        """Run one transfer to a fixed target (a write), recording its figures; errors propagate."""
        t0 = time.perf_counter()
        try:
            result = await attempt(source)
        except Exception:
            self.observe(name(source), time.perf_counter() - t0, ok=False)
            raise
        self.observe(name(source), time.perf_counter() - t0, nbytes)
        return result
