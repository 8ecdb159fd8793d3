"""A proxy link's settings and figures, and the loop proxies run on.

:class:`Impairment` is what one direction of a link does to its bytes, :class:`Counters`
what went through, :class:`ProxyLoop` the event-loop thread that several proxies share.
:class:`~swarmstore.testing.proxy.Proxy` applies them; these are plain data and a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["Counters", "Impairment", "ProxyLoop"]


@dataclass
class Impairment:
    """What one direction of a link does to the bytes it carries (all off by default)."""

    latency: float = 0.0  #: seconds added to every segment
    jitter: float = 0.0  #: up to this many seconds more, uniform, order kept
    bandwidth: float | None = None  #: bytes/s of the link in this direction; None: no cap
    loss: float = 0.0  #: probability a segment is lost and retransmitted after ``rto``
    rto: float = 0.2  #: seconds a lost segment stalls the stream
    resets: float = 0.0  #: probability a segment resets the connection (RST)

    def check(self) -> None:
        """Raise ValueError on a setting no link could have."""
        if self.latency < 0 or self.jitter < 0 or self.rto < 0:
            raise ValueError(f"latency, jitter and rto must be >= 0: {self}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s or None: {self}")
        if not (0 <= self.loss <= 1 and 0 <= self.resets <= 1):
            raise ValueError(f"loss and resets are probabilities in [0, 1]: {self}")


@dataclass
class Counters:
    """What went through a proxy; read them from any thread."""

    connections: int = 0  #: connections accepted (refused ones included)
    active: int = 0  #: connections open now
    refused: int = 0  #: connections reset at once because the proxy was killed
    received_up: int = 0  #: client -> upstream bytes read from the client (held or not)
    received_down: int = 0  #: upstream -> client bytes read from the upstream
    bytes_up: int = 0  #: client -> upstream bytes forwarded
    bytes_down: int = 0  #: upstream -> client bytes forwarded
    stalls: int = 0  #: segments held ``rto`` seconds as lost
    resets: int = 0  #: open connections reset (by ``resets`` or :meth:`Proxy.kill`)
    upstream_errors: int = 0  #: connections whose upstream could not be reached

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class ProxyLoop:
    """An event loop in a daemon thread that runs proxies; close it after its proxies."""

    def __init__(self, name: str = "swarmstore-proxy") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call[T](self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
        self.loop.close()

    def __enter__(self) -> ProxyLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
