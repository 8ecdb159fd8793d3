"""TieredStore's read path, in async and sync forms: tiers top-down, then the backing store.

A read looks in each tier in turn (RAM, disk, ...). A hit is promoted into the tiers
above it; a miss everywhere is fetched from the backing store once per process (single
flight, ``_flight``) and, when a tier is shared between processes (the disk tier), once
per host (its claim, ``_disklocks.Claims``), then filled into every tier. Each tier's
ticket is taken before the tier below it is read, so no promotion or fill can put back a
value that a write replaced meanwhile (``_tier``).

The sync forms (zarr's ``get_sync``) never touch an event loop on a hit; a miss uses the
backing store's sync method when it has one, else runs its coroutine (``_syncio``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import xxhash

import swarmstore.cache._syncio as _syncio
from swarmstore import _clock
from swarmstore.cache._flight import Flights, LeaderCancelled
from swarmstore.cache._identity import version_token
from swarmstore.cache._tier import Entry
from swarmstore.errors import SwarmError, as_node_unavailable

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest, Store
    from zarr.core.buffer import Buffer, BufferPrototype

    from swarmstore.cache._span import Span
    from swarmstore.cache._tier import Tier

__all__ = ["ReadPath"]

logger = logging.getLogger(__name__)

#: a disk hit's view of its file is kept in RAM as is (no copy) when the rest of the file
#: (the header) is at most this many bytes; a smaller range is copied out
_VIEW_SLACK = 64 << 10
#: the version token recorded for a key that was absent (None means "none recorded")
_ABSENT = "<absent>"


class ReadPath:
    """The reads of :class:`~swarmstore.cache.TieredStore` (see the module docstring)."""

    backing: Store
    namespace: str
    ttl: float | None
    validate: bool
    _shared: Any

    # -- async --------------------------------------------------------------------------

    async def _read(
        self, key: str, span: Span, byte_range: ByteRequest | None, prototype: BufferPrototype
    ) -> Entry:
        sh, ns = self._shared, self.namespace
        tickets: list[Any] = []
        stale = None
        for tier in sh.tiers:
            if tier.name in sh.distrusted:
                tickets.append(None)
                continue
            entry = await tier.get(ns, key, span)
            if entry is not None:
                fresh = entry if self._plain else await self._fresh(key, entry)
                if fresh is not None:
                    self._fill(key, span, fresh, tickets)
                    return fresh
                stale = stale or entry
            tickets.append(tier.ticket(ns, key))
        return await self._fetch(key, span, byte_range, prototype, tickets, stale)

    async def _fetch(
        self,
        key: str,
        span: Span,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        tickets: list[Any],
        stale: Entry | None,
    ) -> Entry:
        flights: Flights = self._shared.flights
        while True:
            fut, leader = flights.join(key, span)
            if leader:
                break
            try:
                return await Flights.wait(fut)  # type: ignore[no-any-return]
            except LeaderCancelled:
                continue
        try:
            entry = await self._lead(key, span, byte_range, prototype, tickets)
        except BaseException as e:
            entry = self._failed(key, span, fut, e, stale)
        flights.land(key, span, fut, entry)
        return entry

    async def _lead(
        self,
        key: str,
        span: Span,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        tickets: list[Any],
    ) -> Entry:
        claimer, claim = self._claimer(), None
        if claimer is not None:
            claim, waited = await claimer.claim(self.namespace, key, span)
            found = await claimer.get(self.namespace, key, span) if waited else None
            if found is not None and not self._plain:
                found = await self._fresh(key, found)  # filled before a write: revalidate
            if found is not None:
                if claim is not None:
                    claim.release()
                self._fill(key, span, found, tickets[: self._shared.tiers.index(claimer)])
                return found
        try:
            token = await self._token(key) if self._wants_token else None
            buf = await self.backing.get(key, prototype, byte_range)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return self._fetched(key, span, buf, token, tickets, claim)

    async def _fresh(self, key: str, entry: Entry) -> Entry | None:
        """``entry`` if still fresh (re-stamped when revalidated after its ttl), else None."""
        expired = self.ttl is not None and abs(_clock.wall() - entry.filled_at) > self.ttl
        # (abs: a fill time in the future is another host's clock, not freshness)
        if not expired and not self.validate:
            return entry
        if entry.token is None:
            return None  # nothing to revalidate against: refetch
        try:
            current = await self._token(key)
        except Exception as e:
            self._shared.stale_served += 1
            logger.warning("Cannot validate %r (%s); serving the cached copy", key, e)
            return entry
        if current != entry.token:
            return None
        return replace(entry, filled_at=_clock.wall()) if expired else entry

    async def _token(self, key: str) -> str:
        token = await version_token(self.backing, key)
        return _ABSENT if token is None else token

    # -- sync ---------------------------------------------------------------------------

    def _read_sync(
        self, key: str, span: Span, byte_range: ByteRequest | None, prototype: BufferPrototype
    ) -> Entry:
        sh, ns = self._shared, self.namespace
        tickets: list[Any] = []
        stale = None
        for tier in sh.tiers:
            if tier.name in sh.distrusted or not tier.supports_sync:
                tickets.append(None)
                continue
            entry = tier.get_sync(ns, key, span)
            if entry is not None:
                fresh = entry if self._plain else _syncio.run(self._fresh(key, entry))
                if fresh is not None:
                    self._fill(key, span, fresh, tickets)
                    return fresh
                stale = stale or entry
            tickets.append(tier.ticket(ns, key))
        return self._fetch_sync(key, span, byte_range, prototype, tickets, stale)

    def _fetch_sync(
        self,
        key: str,
        span: Span,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        tickets: list[Any],
        stale: Entry | None,
    ) -> Entry:
        flights: Flights = self._shared.flights
        on_loop = _on_loop_thread()
        while True:
            fut, leader = flights.join(key, span)
            if leader:
                break
            if on_loop:  # never block a loop on a leader that may need that loop
                fut = None
                break
            try:
                return fut.result()  # type: ignore[no-any-return]
            except LeaderCancelled:
                continue
        try:
            entry = self._lead_sync(key, span, byte_range, prototype, tickets)
        except BaseException as e:
            entry = self._failed(key, span, fut, e, stale)
        if fut is not None:
            flights.land(key, span, fut, entry)
        return entry

    def _lead_sync(
        self,
        key: str,
        span: Span,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        tickets: list[Any],
    ) -> Entry:
        claimer, claim = self._claimer(), None
        if claimer is not None:
            claim, waited = claimer.claim_sync(self.namespace, key, span)
            found = claimer.get_sync(self.namespace, key, span) if waited else None
            if found is not None and not self._plain:
                found = _syncio.run(self._fresh(key, found))  # filled before a write
            if found is not None:
                if claim is not None:
                    claim.release()
                self._fill(key, span, found, tickets[: self._shared.tiers.index(claimer)])
                return found
        try:
            token = _syncio.run(self._token(key)) if self._wants_token else None
            if _syncio.supports_sync_io(self.backing):
                buf = self.backing.get_sync(key, prototype=prototype, byte_range=byte_range)  # type: ignore[attr-defined]
            else:
                buf = _syncio.run(self.backing.get(key, prototype, byte_range))
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return self._fetched(key, span, buf, token, tickets, claim)

    # -- shared by both -----------------------------------------------------------------

    @property
    def _plain(self) -> bool:
        return self.ttl is None and not self.validate

    @property
    def _wants_token(self) -> bool:
        return self.validate or self.ttl is not None

    def _claimer(self) -> Any:
        """The tier that coordinates fetches across processes (the disk tier), if trusted."""
        for tier in self._shared.tiers:
            if hasattr(tier, "claim_sync") and tier.name not in self._shared.distrusted:
                return tier
        return None

    def _fetched(
        self, key: str, span: Span, buf: Buffer | None, token: str | None, tickets: list[Any],
        claim: Any,
    ) -> Entry:  # fmt: skip
        sh = self._shared
        data = None if buf is None else _as_bytes(buf)
        digest = None if data is None or not sh.digests else xxhash.xxh3_64_intdigest(data)
        entry = Entry(data, _clock.wall(), token, digest)
        sh.reads += 1
        sh.read_bytes += entry.nbytes
        self._fill(key, span, entry, tickets, claim)  # absent keys too: zarr probes them often
        return entry

    def _fill(
        self, key: str, span: Span, entry: Entry, tickets: list[Any], claim: Any = None
    ) -> None:
        """Put ``entry`` into the tiers the tickets were taken for (those above a hit)."""
        sh, ns = self._shared, self.namespace
        handed = False
        if tickets and entry.digest is None and entry.data is not None and sh.digests:
            # a promotion of bytes a lower tier just verified (the disk's block checksums):
            # their digest goes up with them, for the peers they may be served to
            entry = replace(entry, digest=xxhash.xxh3_64_intdigest(entry.data))
        for tier, ticket in zip(sh.tiers, tickets, strict=False):
            if ticket is None or tier.name in sh.distrusted:
                continue
            if claim is not None and hasattr(tier, "claim_sync"):
                handed = tier.put_sync(ns, key, span, entry, ticket, claim) or True
            else:
                tier.put_sync(ns, key, span, _compact(entry, tier), ticket)
        if claim is not None and not handed:
            claim.release()

    def _failed(
        self, key: str, span: Span, fut: Any, e: BaseException, stale: Entry | None
    ) -> Entry:
        """What a failed fetch gives its followers and its caller: a stale copy or an error."""
        sh = self._shared
        if not isinstance(e, Exception):  # cancelled: followers fetch for themselves
            if fut is not None:
                sh.flights.land(key, span, fut, error=LeaderCancelled())
            raise e
        sh.errors += 1
        if stale is not None:
            sh.stale_served += 1
            logger.warning("Backing store failed reading %r (%s); serving cached copy", key, e)
            return stale
        err = _unavailable(self.backing, key, e)
        if fut is not None:
            sh.flights.land(key, span, fut, error=err)
        if err is e:
            raise e
        raise err from e


def _unavailable(backing: Store, key: str, e: Exception) -> Exception:
    """A transport error of the backing store as NodeUnavailable; anything else as is."""
    if isinstance(e, SwarmError):
        return e
    err = as_node_unavailable(
        e, f"cannot read {key!r}: it is not cached and the backing store {backing!r} failed"
    )
    return err


def _on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _compact(entry: Entry, tier: Tier) -> Entry:
    """A range of a larger file is copied out before it goes to RAM (never pin the file)."""
    data = entry.data
    if isinstance(data, memoryview) and tier.name == "memory" and _overhead(data) > _VIEW_SLACK:
        return replace(entry, data=bytes(data))
    return entry


def _overhead(view: memoryview) -> int:
    try:
        return len(view.obj) - view.nbytes  # type: ignore[arg-type]
    except TypeError:
        return 1 << 62


def _as_bytes(buf: Buffer) -> bytes:
    """The bytes of ``buf``, without a copy when it is a view of a whole bytes object.

    LocalStore and FsspecStore hand zarr ``np.frombuffer(bytes)`` views; caching the bytes
    object they came from saves copying every chunk on the cold path.
    """
    try:
        array = buf.as_numpy_array()
    except Exception:
        return buf.to_bytes()
    base = array.base
    if isinstance(base, bytes) and len(base) == array.nbytes and array.flags.c_contiguous:
        return base
    return array.tobytes()
