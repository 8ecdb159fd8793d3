"""The clocks swarmstore reads: wall time for leases and ttls, monotonic time for intervals.

Nothing orders writes by a clock (versions are per-key counters), but leases, ttls and
reports need wall time, and hosts disagree about it. ``SWARMSTORE_CLOCK_OFFSET`` (seconds, a
float) shifts this process's wall clock, so the multi-host test bed can give each "host" a
skewed clock and prove that no guarantee rests on clocks agreeing.
"""

from __future__ import annotations

import os
import time

__all__ = ["monotonic", "offset", "wall", "wall_ns"]


def offset() -> float:
    """This process's clock offset in seconds (``SWARMSTORE_CLOCK_OFFSET``, default 0)."""
    raw = os.environ.get("SWARMSTORE_CLOCK_OFFSET", "")
    if not raw:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"SWARMSTORE_CLOCK_OFFSET={raw!r} is not a number of seconds") from None


_OFFSET_NS = int(offset() * 1e9)


def wall() -> float:
    """Seconds since the epoch on this host's (possibly skewed) clock."""
    return time.time() + _OFFSET_NS / 1e9


def wall_ns() -> int:
    """Nanoseconds since the epoch on this host's (possibly skewed) clock."""
    return time.time_ns() + _OFFSET_NS


def monotonic() -> float:
    """Seconds on a clock that never goes back (for intervals, deadlines)."""
    return time.monotonic()
