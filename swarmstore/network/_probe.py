"""Prober: keep the figures of idle sources fresh with cheap background probes."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from swarmstore.network._router import TransferRouter

__all__ = ["Prober"]

logger = logging.getLogger(__name__)


class Prober:
    """Probe one idle source at a time, in the lowest QoS class, through the router's lanes.

    A source is probed when it has not been tried for ``interval`` seconds or its circuit
    is half-open (a probe is then the trial that may close it). The probe is an ordinary
    router attempt, so its time and outcome feed the same figures and circuit.
    """

    def __init__(
        self,
        router: TransferRouter,
        fn: Callable[[Any], Awaitable[Any]],
        interval: float,
    ) -> None:
        self.router = router
        self.fn = fn
        self.interval = interval
        self.probing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe[S](self, sources: Sequence[S], name: Callable[[S], str]) -> None:
        """Start a probe of the first source that needs one, unless one is running."""
        if self.probing:
            return
        r = self.router
        now = r.clock()
        for src in sources:
            nm = name(src)
            last = r._stats(nm).last_tried
            stale = last is None or now - last >= self.interval
            circuit = r._circuit(nm)
            if (stale or circuit.state(now) == "half-open") and circuit.admits(now):
                self.probing.add(nm)
                task = asyncio.ensure_future(self._probe(src, nm))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return

    async def _probe(self, src: Any, nm: str) -> None:
        cls = self.router.classes[-1]
        try:
            await self.router._attempt(src, self.fn, nm, None, cls)
        except Exception as e:
            logger.debug("Probe of %s failed: %r", nm, e)
        finally:
            self.probing.discard(nm)

    async def close(self) -> None:
        """Cancel the probes started from this event loop and wait for them."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        for t in mine:
            t.cancel()
        await asyncio.gather(*mine, return_exceptions=True)
