"""The cost model of one source: what a request of a given size costs there, learned from reads.

Requests are grouped into size classes (up to 64 KiB, then powers of 4: 256 KiB, 1 MiB,
4 MiB, ...). Each class keeps two windows of request durations:

- ``recent``: the last few (9). Its median is the class's current estimate: a single
  outlier (a GC pause, a retransmit) never moves it, and a real change of speed moves it
  within 5 requests;
- ``samples``: the last 128, kept sorted, for tail quantiles (hedge delays, deadlines).

Connection setup is kept out: a source's first successful request (which creates its
client and connections, seconds under load) is counted but never sampled.

For a size class a source has never served, the estimate is extrapolated from the classes
it has: latency and bandwidth fitted through their medians (two classes or more). With
only one class the estimate is unknown (None): the router then sends one request there to
measure it, rather than guess. Every read teaches bandwidth, whatever its size.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field

__all__ = ["SourceStats", "size_class"]

_SMALL = 64 * 1024
_MAX_CLASS = 8  # 4 GiB and beyond share a class
RECENT = 9
WINDOW = 128


def size_class(nbytes: int | None) -> int:
    """0 for requests up to 64 KiB, then one class per factor of 4 (256 KiB: 1, 4 MiB: 3)."""
    if not nbytes or nbytes <= _SMALL:
        return 0
    return min(_MAX_CLASS, (((nbytes - 1) // _SMALL).bit_length() + 1) // 2)


class _Window:
    """Durations of one size class: a short window for the estimate, a long one for tails."""

    __slots__ = ("estimate", "nbytes", "ranked", "recent", "samples")

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.samples: deque[float] = deque()
        self.ranked: list[float] = []
        self.estimate = 0.0  #: median of ``recent``
        self.nbytes = 0.0  #: mean bytes of recent requests (for the bandwidth fit)

    def add(self, seconds: float, nbytes: int) -> None:
        self.nbytes = nbytes if not self.samples else 0.8 * self.nbytes + 0.2 * nbytes
        self.samples.append(seconds)
        insort(self.ranked, seconds)
        if len(self.samples) > WINDOW:
            del self.ranked[bisect_left(self.ranked, self.samples.popleft())]
        self.nudge(seconds)

    def nudge(self, seconds: float) -> None:
        """Put ``seconds`` in the short window only (a lower bound seen by a cancelled read)."""
        self.recent.append(seconds)
        ranked = sorted(self.recent)
        self.estimate = ranked[len(ranked) // 2]

    def quantile(self, q: float) -> float:
        ranked = self.ranked
        return ranked[min(len(ranked) - 1, int(q * len(ranked)))]


@dataclass
class SourceStats:
    """What a router has learned about one source, and its counters.

    Examples
    --------
    >>> st = SourceStats()
    >>> st.fold(3.0, 1000, setup=True)  # the first request: counted, not sampled
    >>> st.expected(1000) is None
    True
    >>> for _ in range(3):
    ...     st.fold(0.010, 1000)
    ...     st.fold(0.050, 4 * 2**20)
    >>> round(st.expected(1000), 3), round(st.expected(4 * 2**20), 3)
    (0.01, 0.05)
    >>> round(st.bandwidth / 1e6)  # (4 MiB - 1000 B) in 40 ms
    105
    """

    requests: int = 0  #: attempts that finished (ok, failed or missing)
    failures: int = 0  #: attempts that failed (transport, checksum, deadline)
    missing: int = 0  #: attempts answered "no such key"
    hedges: int = 0  #: attempts started as a hedge
    hedge_wins: int = 0  #: hedges that answered first
    cancelled: int = 0  #: attempts cancelled (another source answered first, or the caller)
    deadline_misses: int = 0  #: attempts cut at their deadline (counted in failures too)
    probes: int = 0  #: probe requests sent
    setups: int = 0  #: first requests kept out of the samples
    last_tried: float | None = None  #: clock time the last attempt started
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=256), repr=False)
    classes: dict[int, _Window] = field(default_factory=dict, repr=False)
    warm: bool = False  #: the setup request has been seen
    predicted: float | None = None  #: moving average of expected seconds of served reads
    observed: float | None = None  #: moving average of their observed seconds
    _fit: tuple[float | None, float] | None = field(default=None, repr=False)

    def fold(self, seconds: float, nbytes: int = 0, *, setup: bool = False) -> None:
        """Fold one successful request; ``setup=True`` for a first request (not sampled)."""
        if setup and not self.warm:
            self.warm = True
            self.setups += 1
            return
        self.warm = True
        c = size_class(nbytes)
        w = self.classes.get(c)
        if w is None:
            w = self.classes[c] = _Window()
        w.add(seconds, nbytes)
        self.samples.append(seconds)
        self._fit = None

    def floor(self, seconds: float, nbytes: int = 0) -> None:
        """A request took *at least* ``seconds`` (it was cancelled): raise the estimate to it."""
        w = self.classes.get(size_class(nbytes))
        if w is not None and seconds > w.estimate:
            w.nudge(seconds)
            self._fit = None

    def known(self, nbytes: int | None) -> bool:
        """Whether requests of this size class have been measured here."""
        return size_class(nbytes) in self.classes

    def expected(self, nbytes: int | None = None) -> float | None:
        """Expected seconds of a request of ``nbytes`` here; None when it cannot be told."""
        w = self.classes.get(size_class(nbytes))
        bw = self.bandwidth
        if w is not None:
            if nbytes and bw:  # within the class, sizes differ up to 4x
                return max(w.estimate + (nbytes - w.nbytes) / bw, w.estimate * 0.5)
            return w.estimate
        if not self.classes:
            return None
        if bw is None:  # one size measured: no slower below it, unknown above it
            size, t = min(self._points())
            return t if (nbytes or 0) <= size else None
        return self.latency_floor() + (nbytes or 0) / bw

    def compare(self, expected: float, observed: float, alpha: float = 0.2) -> None:
        """Record what a request was expected to take and what it took (figures)."""
        if self.observed is None or self.predicted is None:
            self.predicted, self.observed = expected, observed
        else:
            self.predicted = (1 - alpha) * self.predicted + alpha * expected
            self.observed = (1 - alpha) * self.observed + alpha * observed

    def _points(self) -> list[tuple[float, float]]:
        return sorted((w.nbytes, w.estimate) for w in self.classes.values())

    @property
    def bandwidth(self) -> float | None:
        """Bytes/s fitted through the smallest and largest size classes measured."""
        if len(self.classes) < 2:
            return None
        if self._fit is None:
            self._fit = self._fitted()
        return self._fit[0]

    def _fitted(self) -> tuple[float | None, float]:
        """(bandwidth, latency floor), recomputed after an estimate changed."""
        pts = self._points()
        (s0, t0), (s1, t1) = pts[0], pts[-1]
        if s1 <= s0 or t1 <= t0:
            return None, t0  # the larger requests were no slower: no transfer cost to see
        bw = (s1 - s0) / (t1 - t0)
        return bw, max(0.0, t0 - s0 / bw)

    def latency_floor(self) -> float:
        """Seconds of a request that moves no bytes (the fitted intercept, >= 0)."""
        if len(self.classes) < 2:
            return min(self._points())[1]
        if self._fit is None:
            self._fit = self._fitted()
        return self._fit[1]

    @property
    def latency(self) -> float | None:
        """The estimate of the smallest size class measured (figures; older callers)."""
        return min(self._points())[1] if self.classes else None

    def quantile(self, q: float, min_samples: int = 1, nbytes: int | None = None) -> float | None:
        """The ``q`` quantile of recent durations of ``nbytes``' size class (all sizes when
        ``nbytes`` is None and only one class exists); None with fewer than ``min_samples``."""
        w = self.classes.get(size_class(nbytes))
        if w is None:
            if nbytes is not None or len(self.classes) != 1:
                return None
            (w,) = self.classes.values()
        n = len(w.samples)
        if n == 0 or n < min_samples:
            return None
        return w.quantile(q)

    def deadline(self, nbytes: int | None, factor: float, floor: float, cold: float) -> float:
        """Seconds an attempt of ``nbytes`` may run here before it counts as a failure.

        ``factor`` times the class's p99, at least ``floor``; ``cold`` for a size class
        never measured here (it may include setting up a client).
        """
        w = self.classes.get(size_class(nbytes))
        if w is None:
            est = self.expected(nbytes)
            return cold if est is None else max(floor, factor * 2 * est)
        ranked = w.ranked
        p99 = ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))]
        return floor if factor * p99 < floor else factor * p99
