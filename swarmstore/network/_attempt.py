"""Attempt: run one request at one source inside its lanes, and record what it says.

The router decides where and when; :class:`Runner` carries each attempt out and is the one
place that turns an outcome into figures (the cost model), strikes (the circuit) and lane
slots given back:

- a success folds its duration and the bytes it moved (learned from the result) into the
  source's cost model -- its first success is setup and is kept out -- and clears strikes;
- a failure (:mod:`~swarmstore.network._verdict`), an attempt cut at its deadline and an
  attempt overtaken by a hedge are strikes; a missing key and a cancellation by the
  caller are no verdict; anything else is the caller's error and touches nothing;
- writes (:meth:`TransferRouter.send`) are judged by the circuit but never shape the read
  model (a PUT says little about a GET).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from swarmstore.network._model import size_class
from swarmstore.network._verdict import verdict

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from swarmstore.network._hedge import Track
    from swarmstore.network._qos import Lanes
    from swarmstore.network._source import Source

__all__ = ["Job", "Runner"]

logger = logging.getLogger(__name__)


class Job:
    """One fetch or send: what every attempt of it shares."""

    __slots__ = ("attempt", "cls", "fixed", "nbytes", "runner", "size")

    def __init__(
        self,
        runner: Runner,
        attempt: Callable[[Any], Awaitable[Any]],
        cls: str,
        nbytes: int | None,
        size: Callable[[Any], int] | None = None,
        fixed: int | None = None,
    ) -> None:
        self.runner = runner
        self.attempt = attempt
        self.cls = cls
        self.nbytes = nbytes  #: the size the request was planned for
        self.size = size
        self.fixed = fixed  #: bytes moved, when known up front (a write)

    def run(self, src: Any, nm: str, track: Track | None) -> Awaitable[Any]:
        return self.runner.run(self, src, nm, track)

    def measure(self, result: Any) -> int:
        """Bytes the attempt moved: ``size(result)``, else the length of a bytes result (or
        of the first item of a tuple result, as storage's ``(data, record)``)."""
        if self.fixed is not None:
            return self.fixed
        if self.size is not None:
            return int(self.size(result))
        if type(result) is bytes:
            return len(result)
        if isinstance(result, tuple | list) and result:
            result = result[0]
        if isinstance(result, bytes | bytearray | memoryview):
            return len(result)
        n = getattr(result, "nbytes", None)
        return n if isinstance(n, int) else int(self.nbytes or 0)


class Runner:
    """Runs attempts for a router: ``lookup(name)`` gives a source's record, ``lanes`` are
    the router's global lanes, ``clock`` its clock."""

    def __init__(
        self,
        lanes: Lanes,
        lookup: Callable[[str], Source],
        clock: Callable[[], float],
        alpha: float,
    ) -> None:
        self.lanes = lanes
        self.lookup = lookup
        self.clock = clock
        self.alpha = alpha
        self.typical: int | None = None  #: bytes of a typical read (fetches without nbytes)
        #: bytes of a large recent read (a max that decays 2% a read): the size the
        #: deadline of a fetch without ``nbytes`` is taken at, so a large read of unknown
        #: size is not cut at a small read's deadline
        self.large: int | None = None

    def strike(self, e: Source) -> None:
        """One strike against ``e``'s circuit (logged when it ejects the source)."""
        c = e.circuit
        if c.failure(self.clock()):
            logger.info("Ejected %s after %d strikes, for %.1f s", e.name, c.consecutive, c.reset)

    async def run(self, job: Job, src: Any, nm: str, track: Track | None) -> Any:
        """One attempt inside a slot of the source's lanes, then of the global lanes (a
        request queued at a busy source holds no global slot); a free slot is taken
        without awaiting."""
        e = self.lookup(nm)
        cls = job.cls
        own = e.lanes
        if not own.try_acquire(cls):
            await own.acquire(cls)
        try:
            lanes = self.lanes
            if not lanes.try_acquire(cls):
                await lanes.acquire(cls)
            try:
                if job.fixed is not None:
                    return await self._write(job, src, e)
                return await self._read(job, src, e, track)
            finally:
                lanes.release(cls)
        finally:
            own.release(cls)

    async def _read(self, job: Job, src: Any, e: Source, track: Track | None) -> Any:
        """A read attempt, with its outcome folded into the cost model and the circuit."""
        st, circuit = e.stats, e.circuit
        st.last_tried = now = self.clock()
        if circuit.opened_at is not None:
            circuit.begin(now)
        before = st.expected(job.nbytes)
        exploring = size_class(job.nbytes) if before is None else None
        if exploring is not None:
            e.exploring.add(exploring)
        setup = not st.warm
        t0 = time.perf_counter()
        if track is not None:
            track.t0 = t0
        try:
            result = await job.attempt(src)
        except BaseException as exc:
            self.failed(e, time.perf_counter() - t0, exc, track, job.nbytes)
            raise
        finally:
            if exploring is not None:
                e.exploring.discard(exploring)
        seconds = time.perf_counter() - t0
        moved = job.measure(result)
        st.requests += 1
        st.fold(seconds, moved, setup=setup)
        if not setup:
            e.paced(seconds, moved)
        if before is not None:
            st.compare(before, seconds, self.alpha)
        self.typical = moved if self.typical is None else (self.typical * 7 + moved) // 8
        large = self.large
        self.large = moved if large is None or moved >= large else max(moved, large * 49 // 50)
        if circuit.consecutive or circuit.opened_at is not None or circuit.trial:
            if circuit.opened_at is not None:
                logger.info("Circuit of %s closed", e.name)
            circuit.success(now)
        return result

    async def _write(self, job: Job, src: Any, e: Source) -> Any:
        """A write attempt: counted and judged by its circuit, not folded into read figures
        (it paces the yielding classes like a read: they share the link)."""
        st, circuit = e.stats, e.circuit
        if circuit.opened_at is not None:
            circuit.begin(self.clock())
        t0 = time.perf_counter()
        try:
            result = await job.attempt(src)
        except BaseException as exc:
            self.failed(e, 0.0, exc, None, job.nbytes)
            raise
        st.requests += 1
        e.paced(time.perf_counter() - t0, job.nbytes or 0, "write")
        if circuit.consecutive or circuit.opened_at is not None or circuit.trial:
            circuit.success(self.clock())
        return result

    def failed(
        self, e: Source, seconds: float, exc: BaseException, track: Track | None, nbytes: Any
    ) -> None:
        """Record an attempt that raised, by what the exception says about the source."""
        st, circuit = e.stats, e.circuit
        if isinstance(exc, asyncio.CancelledError):
            reason = None if track is None else track.reason
            if reason == "deadline":  # cut: it did not answer in time, so it took longer
                st.requests += 1
                st.failures += 1
                st.deadline_misses += 1
                st.floor(seconds, nbytes)
                self.strike(e)
                return
            st.cancelled += 1
            if reason == "overtaken":  # a hedge answered first: it took at least this long
                st.floor(seconds, nbytes)
                self.strike(e)
            else:  # the caller gave up: no verdict
                circuit.abandon()
            return
        v = verdict(exc) if isinstance(exc, Exception) else "fatal"
        if v == "fatal":  # the caller's error, not the source's
            circuit.abandon()
            return
        st.requests += 1
        if v == "missing":  # the replica lacks the key: no verdict on its health
            st.missing += 1
            circuit.abandon()
            return
        st.failures += 1
        self.strike(e)
