"""Circuit: eject a source that keeps failing, with backoff, and let one trial bring it back.

closed --(``threshold`` consecutive strikes)--> open --(ejection time)--> half-open
half-open admits one trial request: success closes the circuit, a strike opens it again.

A *strike* is a failed attempt (transport error, checksum mismatch), an attempt cut at
its deadline, or an attempt cancelled because a hedge on another source answered first:
a hung node never fails, it is only overtaken, and those overtakings must count. A success
clears the strikes; a missing key and a cancellation by the caller are no verdict.

Ejection time grows as Envoy's outlier detection does: ``base`` times the number of
ejections, capped at ``max_reset`` (never below ``base``). The count drops back to zero
once the source has stayed healthy for ``max_reset`` after its last ejection.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Circuit"]

State = Literal["closed", "open", "half-open"]


class Circuit:
    """Consecutive-strike circuit breaker of one source; the caller passes the clock time.

    Examples
    --------
    >>> c = Circuit(threshold=2, reset=5.0, max_reset=60.0)
    >>> c.failure(now=0.0), c.failure(now=0.1), c.state(now=1.0)
    (False, True, 'open')
    >>> c.admits(now=1.0), c.state(now=5.1), c.begin(now=5.1), c.admits(now=5.1)
    (False, 'half-open', True, False)
    >>> c.failure(now=5.2), c.reset  # the trial failed: ejected for 2 x 5 s
    (False, 10.0)
    >>> c.begin(now=15.2), c.success(now=15.3), c.state(now=15.3)
    (True, None, 'closed')
    """

    def __init__(self, threshold: int = 5, reset: float = 1.0, max_reset: float = 8.0) -> None:
        self.threshold = max(1, threshold)
        self.base_reset = reset
        self.max_reset = max(reset, max_reset)
        self.reset = reset  #: current ejection time
        self.consecutive = 0  #: strikes since the last success
        self.opened_at: float | None = None
        self.trial = False  #: a half-open trial is in flight
        self.opened = 0  #: times the circuit opened from closed (ejections, all time)
        self.ejections = 0  #: the backoff multiplier: ejections since the source was healthy
        self.closed_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"Circuit(consecutive={self.consecutive}, opened_at={self.opened_at}, "
            f"ejections={self.ejections})"
        )

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        return "half-open" if now - self.opened_at >= self.reset else "open"

    def admits(self, now: float, trial: bool = True) -> bool:
        """True when a request may go: closed, or (``trial``) half-open with no trial out."""
        if self.opened_at is None:
            return True
        return trial and not self.trial and now - self.opened_at >= self.reset

    def begin(self, now: float) -> bool:
        """An attempt starts; returns True when it is the half-open trial."""
        if self.state(now) == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def abandon(self) -> None:
        """An attempt ended without a verdict (cancelled by its caller, key missing)."""
        self.trial = False

    def success(self, now: float | None = None) -> None:
        if self.opened_at is not None:
            self.closed_at = now
        self.consecutive = 0
        self.opened_at = None
        self.trial = False

    def failure(self, now: float) -> bool:
        """Record a strike; returns True when it ejected a closed source."""
        self.consecutive += 1
        if self.opened_at is not None:
            if self.trial:  # the half-open trial failed: eject again, for longer
                self.trial = False
                self._eject(now)
            return False
        if self.consecutive >= self.threshold:
            if self.closed_at is not None and now - self.closed_at >= self.max_reset:
                self.ejections = 0  # healthy long enough since the last ejection
            self._eject(now)
            self.opened += 1
            return True
        return False

    def _eject(self, now: float) -> None:
        self.ejections += 1
        self.reset = min(self.max_reset, self.base_reset * self.ejections)
        self.opened_at = now
