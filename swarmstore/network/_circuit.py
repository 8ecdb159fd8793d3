"""Circuit: stop sending requests to a source that keeps failing, and retry it later.

closed --(``threshold`` consecutive failures)--> open --(``reset`` seconds)--> half-open
half-open admits one trial request: success closes the circuit, failure opens it again
with the reset time doubled (up to ``max_reset``).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Circuit"]

State = Literal["closed", "open", "half-open"]


class Circuit:
    """Consecutive-failure circuit breaker of one source; the caller passes the clock time.

    Examples
    --------
    >>> c = Circuit(threshold=2, reset=5.0)
    >>> c.failure(now=0.0), c.failure(now=0.1), c.state(now=1.0)
    (False, True, 'open')
    >>> c.admits(now=1.0), c.state(now=6.0), c.begin(now=6.0), c.admits(now=6.0)
    (False, 'half-open', True, False)
    >>> c.success(); c.state(now=6.5)
    'closed'
    """

    def __init__(self, threshold: int = 5, reset: float = 5.0, max_reset: float = 60.0) -> None:
        self.threshold = max(1, threshold)
        self.base_reset = reset
        self.max_reset = max(reset, max_reset)
        self.reset = reset
        self.consecutive = 0  #: failures since the last success
        self.opened_at: float | None = None
        self.trial = False  #: a half-open trial is in flight
        self.opened = 0  #: times the circuit opened

    def __repr__(self) -> str:
        return f"Circuit(consecutive={self.consecutive}, opened_at={self.opened_at})"

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        return "half-open" if now - self.opened_at >= self.reset else "open"

    def admits(self, now: float) -> bool:
        """True when a request may go: closed, or half-open with no trial in flight."""
        s = self.state(now)
        return s == "closed" or (s == "half-open" and not self.trial)

    def begin(self, now: float) -> bool:
        """An attempt starts; returns True when it is the half-open trial."""
        if self.state(now) == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def abandon(self) -> None:
        """A trial ended without a verdict (cancelled): let the next request try again."""
        self.trial = False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial = False
        self.reset = self.base_reset

    def failure(self, now: float) -> bool:
        """Record a failure; returns True when this failure opened the circuit."""
        self.consecutive += 1
        if self.trial:  # the half-open trial failed: back off
            self.trial = False
            self.reset = min(self.max_reset, self.reset * 2)
            self.opened_at = now
            return False
        if self.opened_at is None and self.consecutive >= self.threshold:
            self.opened_at = now
            self.opened += 1
            return True
        return False
