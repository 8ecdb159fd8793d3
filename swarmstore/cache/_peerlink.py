"""Link: how a reader reaches peers and the scheduler, over Dask's own comms.

A worker's link uses ``worker.rpc`` (its connection pool, with the cluster's security:
TLS when the cluster uses TLS) on the worker's event loop; a client's uses
``client.rpc`` on the client's loop. Reads arrive on other loops (zarr's I/O loop, a
task's thread), so every call hops to the link's loop, as coherence announcements do.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore.cache._peerdir import LIST
from swarmstore.cache._peerserve import GET

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from distributed import Client, Worker

__all__ = ["Link"]


class Link:
    """Calls to peers and to the scheduler, run on ``loop``.

    ``rpc(addr)`` is a Dask connection pool's call (``worker.rpc``, ``client.rpc``);
    ``scheduler`` the pooled call to the scheduler; ``me`` this process's worker address
    (never asked for its own keys), or None on a client.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        rpc: Callable[[str], Any],
        scheduler: Any,
        me: str | None = None,
    ) -> None:
        self.loop = loop
        self.rpc = rpc
        self.scheduler = scheduler
        self.me = me

    @classmethod
    def of_worker(cls, worker: Worker) -> Link:
        return cls(worker.loop.asyncio_loop, worker.rpc, worker.scheduler, worker.address)  # type: ignore[attr-defined]

    @classmethod
    def of_client(cls, client: Client) -> Link:
        return cls(client.loop.asyncio_loop, client.rpc, client.scheduler)  # type: ignore[attr-defined]

    def on_loop(self) -> bool:
        """Whether the calling thread runs this link's loop (a sync wait would deadlock)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def get(self, addr: str, **msg: Any) -> dict[str, Any]:
        """Ask the peer at ``addr`` for one value (``_peerserve.PeerServer.handle``)."""
        return await self._hop(self._get(addr, msg))  # type: ignore[no-any-return]

    async def directory(self, known: dict[str, int]) -> list[dict[str, Any]]:
        """The scheduler's ``_peerdir.PeerDirectory`` listing (``known``: the digests of
        the summaries held, which it need not send again)."""
        return await self._hop(getattr(self.scheduler, LIST)(known=known))  # type: ignore[no-any-return]

    async def _get(self, addr: str, msg: dict[str, Any]) -> Any:
        return await getattr(self.rpc(addr), GET)(**msg)

    async def _hop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.on_loop():
            return await coro
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()  # a cut attempt: stop the call on the link's loop too
            raise
