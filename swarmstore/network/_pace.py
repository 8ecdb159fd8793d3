"""How many requests of the yielding QoS classes a source may have in flight: paced by delay.

Yielding (:mod:`._qos`) limits bulk traffic only while a higher class is active, and only
for requests not yet sent: when an interactive read arrives during a flood, every bulk
request already in flight still shares the link and the server with it. On a 4 MiB/s link
with 32 bulk readers, 16 bulk GETs per node were in flight when the first interactive read
came, and its p99 was 4x idle with yielding (issue 15's goal: 2x).

More requests in flight than a link needs only queue: past the point where the link is
full, each one adds its transfer time to every other's duration and no throughput (Little's
law). So, as TCP Vegas does with its window, the pacer compares each request's duration
with the shortest seen at that source for its kind (read, write, probe) and size class (the
no-queue time; it may creep up 0.2% a request, so a source that got slower for good is
relearned), and sets the yielding classes' limit from it: a quarter less while requests
take more than twice the no-queue time, one more for each that takes less than 1.3x it
while those classes have requests waiting, between 1 and the source's slots, starting at
2 (slow start: with the whole budget open, a source not measured yet took a burst that
queued for a second before the first of it came back to be measured). On a link where
concurrency does not slow requests (object stores that cap each connection, local disks)
the limit grows to the slots within as many requests; on a saturated
link it settles at the few requests that keep it busy, so a read of a higher class that
arrives finds little queued ahead of it.
"""

from __future__ import annotations

from swarmstore.network._model import size_class

__all__ = ["Pacer"]

_SLOW = 2.0  # reads take this many times their no-queue time: fewer in flight
_FAST = 1.3  # under this, with requests waiting: one more in flight
_CREEP = 1.002  # the no-queue time may rise this much a read
_START = 2  # the limit of a source not measured yet (slow start: a burst of them only queues)


class Pacer:
    """The in-flight limit of one source's yielding classes.

    >>> p = Pacer(16)
    >>> p.limit  # slow start
    2
    >>> [p.observe(0.07, 256 * 1024, waiting=True) for _ in range(12)][-1]  # not slowed: grows
    14
    >>> [p.observe(0.5, 256 * 1024, waiting=True) for _ in range(3)]  # 7x: queueing
    [10, 7, 5]
    >>> [p.observe(0.07, 256 * 1024, waiting=True) for _ in range(4)]  # back: it grows again
    [6, 7, 8, 9]
    >>> p.observe(0.07, 256 * 1024, waiting=False)  # nothing waits: no reason to grow
    9
    >>> p.observe(0.001, 0, waiting=True, kind="write")  # a probe: its own no-queue time
    10
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.limit = min(slots, _START)
        self.base: dict[tuple[str, int], float] = {}  #: no-queue seconds per kind and size

    def observe(self, seconds: float, nbytes: int, *, waiting: bool, kind: str = "read") -> int:
        """Fold one request of ``kind`` (``read``, ``write``) and ``nbytes`` that took
        ``seconds``; returns the limit."""
        k = (kind, size_class(nbytes) if nbytes else -1)  # a probe (no bytes) is its own kind
        b = self.base.get(k)
        b = seconds if b is None else min(seconds, b * _CREEP)
        self.base[k] = b
        ratio = seconds / b if b > 0 else 1.0
        if ratio > _SLOW:
            self.limit = max(1, self.limit * 3 // 4)
        elif ratio < _FAST and waiting:
            self.limit = min(self.slots, self.limit + 1)
        return self.limit
