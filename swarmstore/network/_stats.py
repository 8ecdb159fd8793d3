"""SourceStats: what the router has learned about one source from the transfers it saw."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field

__all__ = ["SourceStats"]


@dataclass
class SourceStats:
    """Observed figures of one source: EWMA latency and bandwidth, recent latency samples.

    ``latency`` is the EWMA of whole request durations and ``size`` the EWMA of their
    payloads, so :meth:`expected` adds only the transfer time of bytes *beyond* a typical
    request. Quantiles come from the last ``window`` successful requests, kept sorted as they
    arrive (a quantile is read on every hedged fetch; sorting the window each time cost more
    than the rest of the fetch).
    """

    latency: float | None = None  #: EWMA seconds per successful request
    bandwidth: float | None = None  #: EWMA bytes/second of requests that moved bytes
    size: float | None = None  #: EWMA bytes per successful request
    requests: int = 0  #: attempts that finished (ok or failed)
    failures: int = 0  #: attempts that failed (a missing key is not a failure)
    missing: int = 0  #: attempts answered "no such key"
    hedges: int = 0  #: attempts started as a hedge
    hedge_wins: int = 0  #: hedges that finished first
    cancelled: int = 0  #: attempts cancelled because another source answered first
    last_tried: float | None = None  #: clock time the last attempt started
    window: int = 256
    samples: deque[float] = field(default_factory=deque, repr=False)
    _sorted: list[float] = field(default_factory=list, repr=False)

    def fold(self, seconds: float, nbytes: int, alpha: float) -> None:
        """Fold one successful request into the averages and the sample window."""
        a = alpha
        self.latency = seconds if self.latency is None else (1 - a) * self.latency + a * seconds
        self.size = nbytes if self.size is None else (1 - a) * self.size + a * nbytes
        if nbytes > 0 and seconds > 0:
            bw = nbytes / seconds
            self.bandwidth = bw if self.bandwidth is None else (1 - a) * self.bandwidth + a * bw
        samples, ranked = self.samples, self._sorted
        if len(ranked) != len(samples):  # samples set from outside: rank them again
            ranked[:] = sorted(samples)
        samples.append(seconds)
        insort(ranked, seconds)
        while len(samples) > self.window:
            del ranked[bisect_left(ranked, samples.popleft())]

    def floor(self, seconds: float, alpha: float) -> None:
        """A request took *at least* ``seconds`` (it was cancelled): raise the average to it."""
        if self.latency is None or seconds > self.latency:
            self.fold(seconds, 0, alpha)

    def expected(self, nbytes: int | None = None) -> float:
        """Expected seconds for a request of ``nbytes``; 0 for a source never measured."""
        if self.latency is None:
            return 0.0  # unknown sources are tried first so they get measured
        t = self.latency
        if nbytes and self.bandwidth and self.size is not None and nbytes > self.size:
            t += (nbytes - self.size) / self.bandwidth
        return t

    def quantile(self, q: float, min_samples: int = 1) -> float | None:
        """The ``q`` quantile of recent request durations, None with fewer than ``min_samples``."""
        n = len(self.samples)
        if n == 0 or n < min_samples:
            return None
        ranked = self._sorted
        if len(ranked) != n:  # samples set from outside: rank them again
            ranked[:] = sorted(self.samples)
        return ranked[min(n - 1, int(q * n))]
