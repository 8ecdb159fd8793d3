"""QoS classes and lanes: one concurrency budget shared by classes of different priority.

A request's class comes from a context variable set with :func:`qos`
(``with swarmstore.qos("bulk"): ...``), so it follows the code path that issues the I/O
-- through ``await``, ``asyncio.create_task`` and zarr's sync-to-async bridge -- without any
argument threading. :class:`Lanes` admits requests of those classes into a fixed number of
slots: each class has a *reserve* (its share of the slots), and a class may take a free slot
only if the slots left free afterwards still cover the unused reserves of every class of
higher priority. So bulk traffic can never occupy the slots held for interactive reads,
while any class may use the whole budget when nothing above it wants it.

Reserved slots are not enough on a link: the requests of a class in flight share its
bandwidth and the server's CPU with every other request there, so 10 bulk reads in flight
slow an interactive one about tenfold whatever slot it holds. A class may therefore
*yield* (mClock's limit): while a higher class holds, awaits or used a slot within the
last ``window`` seconds, it may hold at most its ``yields`` fraction of the slots (at least
one, so it always makes progress); when the higher classes go quiet, it has the whole
budget again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from swarmstore import config
from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

__all__ = ["Lanes", "current_qos", "qos", "qos_classes"]

_QOS: contextvars.ContextVar[str | None] = contextvars.ContextVar("swarmstore_qos", default=None)


def qos_classes() -> list[str]:
    """The configured QoS classes, highest priority first (``swarmstore.network.qos-classes``)."""
    classes = config.value("network.qos-classes")
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"swarmstore.network.qos-classes must list class names, got {classes!r}")
    return list(classes)


@contextlib.contextmanager
def qos(cls: str) -> Iterator[str]:
    """Run the block's transfers in QoS class ``cls`` (``interactive``, ``normal``, ``bulk``).

    Examples
    --------
    >>> import swarmstore
    >>> with swarmstore.qos("bulk"):
    ...     swarmstore.network.current_qos()
    'bulk'
    >>> swarmstore.network.current_qos()
    'normal'
    """
    classes = qos_classes()
    if cls not in classes:
        raise ConfigError(f"unknown QoS class {cls!r}; configured classes: {', '.join(classes)}")
    token = _QOS.set(cls)
    try:
        yield cls
    finally:
        _QOS.reset(token)


def current_qos() -> str:
    """The ambient QoS class: the innermost :func:`qos` block, else ``network.qos-default``."""
    cls = _QOS.get()
    return cls if cls is not None else str(config.value("network.qos-default"))


class _Waiter:
    __slots__ = ("cls", "future", "granted", "loop")

    def __init__(self, cls: str, loop: asyncio.AbstractEventLoop) -> None:
        self.cls = cls
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Lanes:
    """Admit requests of several priority classes into ``capacity`` shared slots.

    Parameters
    ----------
    capacity : int or None
        Slots in all; None means unlimited (requests are only counted).
    classes : sequence of str
        Class names, highest priority first.
    shares : mapping of str to float
        Fraction of ``capacity`` reserved for each class; they must sum to less than 1 so
        the lowest class always has at least one slot it may use.
    yields : mapping of str to float, optional
        Fraction of ``capacity`` (in (0, 1]) a class may hold while a higher class is
        active; the highest class never yields.
    window : float
        Seconds a class stays active after it last took or gave back a slot.

    Notes
    -----
    Thread-safe and loop-agnostic: state sits behind a lock and a waiter is woken on its
    own event loop, so one ``Lanes`` can serve zarr's I/O loop and a Dask worker's loop at
    once. A freed slot goes first to waiting classes still under their reserve, then by
    priority; within a class requests are served in arrival order.
    """

    def __init__(
        self,
        capacity: int | None,
        classes: Sequence[str],
        shares: Mapping[str, float] | None = None,
        yields: Mapping[str, float] | None = None,
        window: float = 0.25,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigError(f"QoS lane capacity must be at least 1, got {capacity}")
        shares = dict(shares or {})
        unknown = set(shares) - set(classes)
        if unknown:
            raise ConfigError(f"QoS shares name unknown classes: {sorted(unknown)}")
        if any(s < 0 for s in shares.values()) or sum(shares.values()) >= 1:
            raise ConfigError(f"QoS shares must be >= 0 and sum to less than 1, got {shares}")
        self.capacity = capacity
        self.classes = list(classes)
        self.reserved = self._reserves(capacity, self.classes, shares)
        self.in_use = dict.fromkeys(self.classes, 0)
        self.granted = dict.fromkeys(self.classes, 0)
        self._waiting: dict[str, deque[_Waiter]] = {c: deque() for c in self.classes}
        self._higher = {c: self.classes[:i] for i, c in enumerate(self.classes)}
        # Reserves of the classes above each class: with at least this many slots left free
        # after a take, no higher reserve can be short, whatever is in use (a fast path).
        self._above = {c: sum(self.reserved[h] for h in self._higher[c]) for c in self.classes}
        self._busy = 0  # slots in use, all classes
        self._queued = 0  # waiters, all classes
        self._lock = threading.Lock()
        self.window = window
        self.limits = self._limits(capacity, self.classes, dict(yields or {}))
        self._active_until = dict.fromkeys(self.classes, 0.0)  # monotonic time, per class
        # classes whose activity makes some lower class yield: only they are timestamped
        self._watched = {h for c in self.limits for h in self._higher[c]}
        #: in-flight limits set from outside (:meth:`pace`): slots a class may hold at most
        self.caps: dict[str, int] = {}

    @staticmethod
    def _reserves(
        capacity: int | None, classes: list[str], shares: dict[str, float]
    ) -> dict[str, int]:
        if capacity is None:
            return dict.fromkeys(classes, 0)
        floor = {c: int(capacity * shares.get(c, 0.0)) for c in classes}
        # Give every class with a share at least one slot, when that still leaves room.
        at_least_one = {c: max(floor[c], 1 if shares.get(c, 0.0) > 0 else 0) for c in classes}
        return at_least_one if sum(at_least_one.values()) < capacity else floor

    @staticmethod
    def _limits(
        capacity: int | None, classes: list[str], yields: dict[str, float]
    ) -> dict[str, int]:
        unknown = set(yields) - set(classes)
        if unknown:
            raise ConfigError(f"QoS yields name unknown classes: {sorted(unknown)}")
        if any(not 0 < y <= 1 for y in yields.values()):
            raise ConfigError(f"QoS yields must be in (0, 1], got {yields}")
        if capacity is None:
            return {}
        top = classes[0] if classes else None
        return {c: max(1, int(capacity * y)) for c, y in yields.items() if c != top}

    def __repr__(self) -> str:
        return f"Lanes(capacity={self.capacity}, reserved={self.reserved}, limits={self.limits})"

    def _higher_active(self, cls: str, now: float) -> bool:
        """Whether a class above ``cls`` holds, awaits or recently used a slot here."""
        return any(
            self.in_use[h] or self._waiting[h] or self._active_until[h] > now
            for h in self._higher[cls]
        )

    def _capped(self, cls: str) -> bool:
        """``cls`` holds as many slots as :meth:`pace` allows it."""
        cap = self.caps.get(cls)
        return cap is not None and self.in_use[cls] >= cap

    def _yields(self, cls: str) -> bool:
        """``cls`` is at its limit while a higher class is active: it must wait."""
        limit = self.limits.get(cls)
        return (
            limit is not None
            and self.in_use[cls] >= limit
            and self._higher_active(cls, time.monotonic())
        )

    # --- decisions (call with the lock held) ---------------------------------------------
    def _unused(self, cls: str) -> int:
        return max(0, self.reserved[cls] - self.in_use[cls])

    def _admits(self, cls: str) -> bool:
        if self.capacity is None:
            return True
        if cls in self.limits and (self._yields(cls) or self._capped(cls)):
            return False
        free = self.capacity - self._busy
        if free - 1 >= self._above[cls]:
            return True
        return free >= 1 and free - 1 >= sum(self._unused(c) for c in self._higher[cls])

    def _dispatch(self) -> None:
        """Grant slots to waiters while any may take one: under-reserve classes first."""
        while self._queued:
            cls = self._next_class()
            if cls is None:
                return
            waiter = self._waiting[cls].popleft()
            self._queued -= 1
            self._take(cls)
            waiter.granted = True
            if waiter.loop is asyncio._get_running_loop():
                _wake(waiter.future)  # its own loop's thread: no need to wake the selector
            else:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    def _next_class(self) -> str | None:
        """The class whose first waiter gets the next slot: the highest-priority class
        still under its reserve, else the highest-priority class; None if none admits."""
        over = None
        for c in self.classes:
            if self._waiting[c] and self._admits(c):
                if self.in_use[c] < self.reserved[c]:
                    return c
                if over is None:
                    over = c
        return over

    def _take(self, cls: str) -> None:
        self.in_use[cls] += 1
        self.granted[cls] += 1
        self._busy += 1

    # --- public API ------------------------------------------------------------------------
    def check(self, cls: str) -> str:
        if cls not in self.in_use:
            raise ConfigError(f"unknown QoS class {cls!r}; known: {', '.join(self.classes)}")
        return cls

    def try_acquire(self, cls: str) -> bool:
        """Take a slot of class ``cls`` now if one is free to it (nobody queued); no waiting.

        The uncontended path of :meth:`acquire`, without a coroutine: callers try this
        first and await :meth:`acquire` only when it returns False.
        """
        in_use = self.in_use
        if cls not in in_use:
            self.check(cls)
        with self._lock:
            if self._queued:
                return False
            cap = self.capacity
            if cap is not None and cap - self._busy <= self._above[cls]:  # else: admitted
                if not self._admits(cls):
                    return False
            elif cls in self.limits and (self._yields(cls) or self._capped(cls)):
                return False
            in_use[cls] += 1
            self.granted[cls] += 1
            self._busy += 1
        return True

    async def acquire(self, cls: str) -> None:
        """Wait for a slot of class ``cls``."""
        self.check(cls)
        with self._lock:
            if not self._queued and self._admits(cls):
                self._take(cls)
                return
            waiter = _Waiter(cls, asyncio.get_running_loop())
            self._waiting[cls].append(waiter)
            self._queued += 1
            self._dispatch()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.granted:
                    self._release_locked(cls)
                else:
                    self._waiting[cls].remove(waiter)
                    self._queued -= 1
            raise

    def release(self, cls: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._release_locked(cls)

    def _release_locked(self, cls: str) -> None:
        if self.in_use.get(cls, 0) <= 0:
            raise RuntimeError(f"release of a {cls!r} slot that was never acquired")
        self.in_use[cls] -= 1
        self._busy -= 1
        if cls in self._watched:
            self._active_until[cls] = time.monotonic() + self.window
        if self._queued:
            self._dispatch()

    @contextlib.asynccontextmanager
    async def slot(self, cls: str) -> AsyncIterator[None]:
        """``async with lanes.slot("bulk"):`` hold one slot for the block."""
        if not self.try_acquire(cls):
            await self.acquire(cls)
        try:
            yield
        finally:
            self.release(cls)

    def queued(self, cls: str | None = None) -> int:
        """Requests waiting for a slot (of ``cls``, or of every class)."""
        return len(self._waiting[cls]) if cls is not None else self._queued

    def would_queue(self, cls: str) -> int:
        """Requests of ``cls`` that would be ahead of a new one, counting itself; 0: none.

        A lock-free estimate (the router orders sources by it): a request queues when
        others already wait or when no slot is free to its class.
        """
        cap, queued = self.capacity, self._queued
        if cap is None:
            return 0
        if queued:
            return queued + 1
        if cap - self._busy <= self._above[self.check(cls)] and not self._admits(cls):
            return 1
        if cls in self.limits and (self._yields(cls) or self._capped(cls)):
            return 1
        return 0

    def pace(self, limit: int) -> None:
        """Let each yielding class hold at most ``limit`` slots (>= 1), whatever is active
        (:class:`~swarmstore.network._pace.Pacer` sets it from how much reads queue)."""
        with self._lock:
            grew = any(limit > self.caps.get(c, limit) for c in self.limits)
            for c in self.limits:
                self.caps[c] = max(1, limit)
            if grew and self._queued:
                self._dispatch()

    def reserve_above(self, cls: str) -> int:
        """Slots held for the classes above ``cls`` (free slots at most this many may be
        closed to ``cls``)."""
        return self._above.get(cls, 0)

    def busy(self) -> int:
        """Slots in use, all classes together."""
        return self._busy

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per class: slots in use, requests queued, reserve and slots granted so far."""
        with self._lock:
            return {
                c: {
                    "in_flight": self.in_use[c],
                    "queued": len(self._waiting[c]),
                    "reserved": self.reserved[c],
                    "granted": self.granted[c],
                }
                for c in self.classes
            }
