"""The parts of ReplicatedStore around its reads and writes: background work (repairs,
hint replays, laggard writes), hint replay, and maintenance in async and sync forms.

Maintenance runs on zarr's I/O loop (:mod:`swarmstore._sync`), where zarr's sync API runs
the store and an S3 node's session lives: awaitable from any loop, and callable from sync
code as ``scrub_sync()`` and so on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore import _sync
from swarmstore.storage import _maintenance
from swarmstore.storage._handoff import replay

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from swarmstore.storage._convert import ConvertReport
    from swarmstore.storage._hints import HintLog
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._maintenance import RebalanceReport, RepairReport, ScrubReport
    from swarmstore.storage._node import Node

__all__ = ["Maintained"]


class Maintained:
    """Mixed into :class:`~swarmstore.storage.ReplicatedStore`."""

    hints: HintLog
    hints_replayed: int
    _background: set[asyncio.Future[Any]]
    _laggards: set[asyncio.Future[Any]]

    if TYPE_CHECKING:  # provided by the store

        def targets(self, key: str) -> list[Node]: ...

        async def _ensure_open(self) -> None: ...

    # --- background work -----------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._adopt(asyncio.get_running_loop().create_task(coro))

    def _adopt(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._settled)

    def _hold(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Keep a laggard write alive (and its exception retrieved) without flush waiting
        on it: a frozen node must not hang ``flush`` or ``aclose``."""
        self._laggards.add(task)
        task.add_done_callback(self._laggards.discard)
        task.add_done_callback(_retrieve)
        return task

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: node errors of background work are not news

    async def flush(self) -> None:
        """Wait for background repairs and hint replays started so far (on this loop and on
        zarr's I/O loop). Laggard writes to a frozen node are not waited for.

        Waits on a snapshot of the tasks (``asyncio.wait``, so their done-callbacks run),
        again only while new ones appeared; never spins.
        """
        await self._flush_here()
        if not _sync.on_io_loop():
            await _sync.hop(self._flush_here())

    async def _flush_here(self) -> None:
        loop = asyncio.get_running_loop()
        waited: set[asyncio.Future[Any]] = set()
        while True:
            batch = {t for t in self._background if t not in waited and t.get_loop() is loop}
            if not batch:
                return
            await asyncio.wait(batch)
            waited |= batch
            await asyncio.sleep(0)

    def _late_outcome(self, node: Node, key: str, version: Version, task: Any) -> None:
        """A laggard's commit finished after the write returned."""
        if task.cancelled() or task.exception() is not None:
            return
        if self.hints.has(node.name, key):
            from swarmstore.storage._hints import hint_name

            self.hints.discard(node.name, key)
            for holder in self.targets(key):
                if holder is not node:
                    self._spawn(holder.meta_delete(hint_name(node.name, key)))

    # --- hinted handoff --------------------------------------------------------------------------
    async def replay_hints(self, *, scan: bool = True) -> int:
        """Replay pending hints, this host's and (``scan=True``, one listing per node) those
        any host left on the nodes; returns how many were applied. Background replays are
        waited for first, so on return every reachable node has caught up."""
        return await _sync.hop(self._replay_hints(scan))

    async def _replay_hints(self, scan: bool) -> int:
        await self._ensure_open()
        before = self.hints_replayed
        await self._flush_here()
        await replay(self, scan=scan)
        return self.hints_replayed - before

    # --- maintenance (swarmstore.storage._maintenance) ------------------------------------------
    # Maintenance runs on zarr's I/O loop (swarmstore._sync), where zarr's sync API runs the
    # store and an S3 node's session lives: awaitable from any loop, with sync forms.
    async def scrub(self, progress: Any = None) -> ScrubReport:
        """Verify every replica of every key; see :func:`swarmstore.storage.scrub`."""
        return await _sync.hop(_maintenance.scrub(self, progress=progress))

    async def repair(self, progress: Any = None) -> RepairReport:
        """Restore ``replicas`` healthy copies of every key (:func:`swarmstore.storage.repair`)."""
        return await _sync.hop(_maintenance.repair(self, progress=progress))

    async def rebalance(self, progress: Any = None, *, limit: int | None = None) -> RebalanceReport:
        """Move keys where placement says after nodes joined or left; resumable."""
        return await _sync.hop(_maintenance.rebalance(self, progress=progress, limit=limit))

    async def convert(self, prefix: str = "", *, limit: int | None = None) -> ConvertReport:
        """Give keys under ``prefix`` the form the coding policy names now (replicated or
        erasure-coded); resumable (:func:`swarmstore.storage.convert`)."""
        from swarmstore.storage._convert import convert

        return await _sync.hop(convert(self, prefix, limit=limit))  # type: ignore[arg-type]

    def convert_sync(self, prefix: str = "", *, limit: int | None = None) -> ConvertReport:
        """:meth:`convert` from synchronous code."""
        from swarmstore.storage._convert import convert

        return _sync.run(convert(self, prefix, limit=limit))  # type: ignore[arg-type]

    def scrub_sync(self, progress: Any = None) -> ScrubReport:
        """:meth:`scrub` from synchronous code (scripts, notebook cells, threads)."""
        return _sync.run(_maintenance.scrub(self, progress=progress))

    def repair_sync(self, progress: Any = None) -> RepairReport:
        """:meth:`repair` from synchronous code."""
        return _sync.run(_maintenance.repair(self, progress=progress))

    def rebalance_sync(self, progress: Any = None, *, limit: int | None = None) -> RebalanceReport:
        """:meth:`rebalance` from synchronous code."""
        return _sync.run(_maintenance.rebalance(self, progress=progress, limit=limit))

    def replay_hints_sync(self, *, scan: bool = True) -> int:
        """:meth:`replay_hints` from synchronous code."""
        return _sync.run(self._replay_hints(scan))

    def flush_sync(self) -> None:
        """:meth:`flush` from synchronous code."""
        _sync.run(self._flush_here())


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
