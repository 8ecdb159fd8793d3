"""Leases with heartbeats: how a save or a collection tells other processes it is alive.

A save writes ``inflight/<id>.json`` before anything else and a collection takes
``locks/gc.json``; both documents carry ``renewed``, the holder's wall clock
(:func:`swarmstore._clock.wall`) at its last heartbeat, rewritten every ``heartbeat``
seconds by a task on the store's event loop. A holder whose ``renewed`` is more than
``lease`` seconds away from the reader's clock is dead (killed, frozen, partitioned):
its marker stops deferring sweeps and its lock can be broken, within one lease of the
kill rather than after the hour a start-time lease needed.

Safety does not rest on clocks agreeing: a save checks that its marker is still there
right before committing (:meth:`Lease.held`), and a collection that removed a dead
marker sweeps nothing in that round, so a holder declared dead by mistake loses its
save (:class:`~swarmstore.errors.LeaseLostError`), never committed data. Clocks further
apart than the lease only cost liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import swarmstore.checkpoint._json as _json
from swarmstore import _clock
from swarmstore.checkpoint._docs import delete_doc, get_doc, put_doc
from swarmstore.errors import ManifestError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["Lease", "LeaseTerms", "is_dead", "read_doc"]

logger = logging.getLogger(__name__)

_MAX_DOC = 1 << 20


@dataclass(frozen=True)
class LeaseTerms:
    """How long a silent holder counts as alive, and how often a holder renews."""

    lease: float = 45.0
    heartbeat: float = 10.0


def is_dead(doc: dict[str, Any] | None, lease: float, now: float) -> bool:
    """Whether the holder of ``doc`` missed its heartbeats for longer than ``lease``.

    A document without a readable ``renewed`` (or legacy ``started``) time is dead.
    """
    if not doc:
        return True
    renewed = doc.get("renewed", doc.get("started"))
    if isinstance(renewed, bool) or not isinstance(renewed, int | float):
        return True
    return abs(now - renewed) > lease


async def read_doc(store: Store, key: str) -> dict[str, Any] | None:
    """A small JSON object from the store; None when absent or not a valid JSON object."""
    buf = await get_doc(store, key)
    if buf is None:
        return None
    try:
        doc = _json.loads(buf.to_bytes(), where=key, max_bytes=_MAX_DOC)
    except ManifestError as e:
        logger.warning("Ignoring %s", e)
        return {}
    return doc if isinstance(doc, dict) else {}


class Lease:
    """A marker or lock document in ``store`` at ``key``, renewed until released.

    Create with :meth:`write` (a marker: plain put) or :meth:`acquire` (a lock:
    conditional create that breaks a dead holder). Both start the heartbeat on the
    running event loop; :meth:`release` stops it and deletes the key if still ours.
    """

    def __init__(self, store: Store, key: str, doc: dict[str, Any], terms: LeaseTerms):
        self.store, self.key, self.terms = store, key, terms
        self.id = uuid.uuid4().hex
        self._doc = {**doc, "id": self.id, "beat": 0}
        self._task: asyncio.Task[None] | None = None
        self._exclusive = False  # a lock (acquire), not a marker whose key is ours alone
        #: True once a renewal found the key gone or someone else's.
        self.lost = False

    def _body(self) -> bytes:
        self._doc["renewed"] = _clock.wall()
        return _json.dumps(self._doc)

    async def write(self) -> None:
        """Write the document (unconditionally) and start renewing it."""
        await put_doc(self.store, self.key, self._body())
        self._start()

    async def acquire(self) -> bool:
        """Create the document unless a live holder has it; True if this lease holds it."""
        from swarmstore.checkpoint._commit import put_if_absent

        for _ in range(2):
            if await put_if_absent(self.store, self.key, self._body()):
                self._exclusive = True
                self._start()
                return True
            held = await read_doc(self.store, self.key)
            if held is not None and not is_dead(held, self.terms.lease, _clock.wall()):
                return False
            logger.warning("Breaking the abandoned lease %s: %s", self.key, held)
            await delete_doc(self.store, self.key)
        return False

    async def held(self) -> bool:
        """Whether the key still holds this lease (nobody declared it dead and removed it)."""
        doc = await read_doc(self.store, self.key)
        return bool(doc) and doc.get("id") == self.id and not self.lost

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.terms.heartbeat)
            try:
                if not await self.held():
                    self.lost = True
                    logger.warning("Lease %s was taken over; renewals stop", self.key)
                    return
                self._doc["beat"] += 1
                await put_doc(self.store, self.key, self._body())
            except Exception:
                logger.warning("Could not renew the lease %s", self.key, exc_info=True)

    def abandon(self) -> None:
        """Stop renewing, from any thread, without touching the store (the key then dies)."""
        task = self._task
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)

    async def release(self) -> None:
        """Stop renewing and delete the key if it still holds this lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._exclusive or await self.held():  # a lock may be someone else's by now
            await delete_doc(self.store, self.key)
