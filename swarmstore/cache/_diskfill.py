"""The disk tier's background fills: one thread per tier, gathering fills into batches.

Reads never wait on the disk: a miss queues its value here and returns. The thread
gathers what arrives within ``GATHER`` seconds (up to ``BATCH`` fills) and hands the
batch to the tier's publisher, one index transaction per batch; it also writes the
batched access times and runs queued invalidations (those that came from other
workers, which must not block the event loop). It lingers briefly when idle so a
stream of misses pays no thread start each, and exits on ``close()``.

Beyond ``pending_limit`` queued bytes a fill is skipped (and its claim released), so
a slow disk slows nothing but the cache.

The thread holds this queue and the publisher callables, never the tier object, so a
tier nobody references is garbage-collected (and its finalizer closes everything).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from swarmstore.cache._span import Span

__all__ = ["Fill", "FillQueue"]

logger = logging.getLogger(__name__)

BATCH = 64  # fills published per index transaction
GATHER = 0.05  # seconds the thread waits for more fills to share a transaction
LINGER = 2.0  # seconds an idle thread waits for work before it exits


@dataclass(slots=True)
class Fill:
    """A value to write, the ticket taken before it was fetched, and its claim if any."""

    ns: str
    key: str
    span: Span
    data: bytes | memoryview | None
    filled_at: float
    token: str | None
    ticket: Any
    claim: Any = None
    done: bool = field(default=False)

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else 0

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None


class FillQueue:
    """Queue of fills and deferred work, drained by one lingering thread."""

    def __init__(
        self,
        publish: Callable[[list[Fill]], None],
        housekeeping: Callable[[], None],
        pending_limit: int,
    ) -> None:
        self._publish = publish
        self._housekeeping = housekeeping
        self.pending_limit = pending_limit
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Fill] = collections.deque()
        self._thread: threading.Thread | None = None
        self._busy = False  # a batch is being written
        self._hurry = 0  # flush() calls waiting, or claimed fills: no gathering
        self._want_housekeeping = False
        self._stop = False
        self.pending_bytes = 0
        self.skipped = 0

    def submit(self, fill: Fill) -> bool:
        """Queue ``fill``; False (and its claim released) when over the pending limit."""
        with self._cond:
            if self.pending_bytes + fill.nbytes > self.pending_limit:
                self.skipped += 1
                fill.release()
                return False
            self._queue.append(fill)
            self.pending_bytes += fill.nbytes
        self._wake()
        return True

    def want_housekeeping(self) -> None:
        """Ask the thread to run the housekeeping callable soon (access times, invalidations)."""
        with self._cond:
            if self._want_housekeeping:
                return
            self._want_housekeeping = True
        self._wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written; False on timeout."""
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: not self._queue and not self._busy and not self._want_housekeeping,
                    timeout=timeout,
                )
            finally:
                self._hurry -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (a later submit starts a new one)."""
        self.flush(timeout)
        with self._cond:
            thread = self._thread
            self._stop = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            if self._thread is None:
                self._stop = False
            dropped = list(self._queue)
            self._queue.clear()
            self.pending_bytes = 0
        for fill in dropped:
            fill.release()

    def _wake(self) -> None:
        with self._cond:
            if self._thread is not None:
                self._cond.notify_all()
                return
            thread = self._thread = threading.Thread(
                target=self._drain, name="swarmstore-disk-fill", daemon=True
            )
        thread.start()

    def _next_batch(self) -> tuple[list[Fill], bool] | None:
        with self._cond:
            deadline = time.monotonic() + LINGER
            while not self._queue and not self._want_housekeeping:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    self._thread = None
                    self._stop = False
                    self._cond.notify_all()
                    return None
                self._cond.wait(left)
            urgent = self._hurry or any(f.claim is not None for f in self._queue)
            if 0 < len(self._queue) < BATCH and not urgent:
                # gather: fills arriving together share one transaction (and fsync pass)
                self._cond.wait_for(lambda: len(self._queue) >= BATCH or self._hurry > 0, GATHER)
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            chores, self._want_housekeeping = self._want_housekeeping, False
            self._busy = True
            return batch, chores

    def _drain(self) -> None:
        while (item := self._next_batch()) is not None:
            batch, chores = item
            try:
                if chores or batch:
                    self._housekeeping()
                if batch:
                    self._publish(batch)
            except Exception:  # the publisher reports its own failures; never die silently
                logger.exception("disk cache fill thread failed")
            finally:
                for fill in batch:
                    fill.release()
                with self._cond:
                    self.pending_bytes -= sum(fill.nbytes for fill in batch)
                    self._busy = False
                    self._cond.notify_all()
