"""PeerTier: a miss in the local tiers served from another worker's cache, when faster.

The last tier of a worker's chain (RAM -> disk -> peer -> backing store). On a local miss:

1. **Guess** who holds the key (``_peerdir.Directory``: the workers whose heartbeat
   summary may hold it, the owner ring's worker first), never this worker itself, nor a
   peer quarantined for serving bad bytes. No guess: a miss at once, no request.
2. **Choose** with the transfer router: the guess is a source ``peer:<address>`` and the
   backing store a source ``remote:<ns>``, both with latency and bandwidth learned like
   any node's (a peer from its answers, the remote from the backing reads this tier
   times: the ticket taken before one, the fill after it). The router's order decides; a
   peer it has never measured is tried (that measures it); while the remote is unmeasured
   the peer goes first. A peer whose circuit is open is not asked.
3. **Ask** one peer (``_peerserve``), through ``router.fetch`` (a lane slot in the
   ambient QoS class, its outcome in the peer's figures and circuit), cut at the router's
   deadline for it (at most ``peer-timeout``): a wrong guess, a busy, slow or frozen peer
   costs one attempt, then the caller reads the backing store.
4. **Verify**: the bytes must match the digest recorded when they were read from the
   backing store; a peer whose bytes fail is quarantined (``peer-quarantine``), counted
   (``corrupt``) and struck in the router like a corrupt replica.

Freshness: the request carries this worker's invalidation watermarks and a peer answers
only when its own cover them (``_coherence.Watermarks``), so a peer's copy is never older
than a write this worker knows of; a fill from a peer takes the local tiers' tickets like
any fill. The tier holds nothing itself: ``put`` only times the backing read, ``evict``
has nothing to drop (the write's broadcast reaches the peers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore import config
from swarmstore.cache._peerdir import Directory
from swarmstore.cache._peerlink import Link
from swarmstore.cache._peerserve import span_to_wire
from swarmstore.cache._tier import Entry
from swarmstore.errors import (
    ChecksumMismatch,
    DeadlineExceeded,
    NodeUnavailable,
    is_transport_error,
)
from swarmstore.network import current_qos, default_router, qos

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Client

    from swarmstore.cache._coherence import Watermarks
    from swarmstore.cache._span import Span
    from swarmstore.network import TransferRouter

__all__ = ["PeerMiss", "PeerTier", "choose"]

logger = logging.getLogger(__name__)


class PeerMiss(KeyError):
    """The peer answered without the value (miss, behind, busy): the router's ``missing``."""


def peer_source(addr: str) -> str:
    """The router's name for the peer at ``addr``."""
    return f"peer:{addr}"


def remote_source(ns: str) -> str:
    """The router's name for the backing store of namespace ``ns``, as this tier times it."""
    return f"remote:{ns}"


_REMOTE = object()


class PeerTier:
    """Serve a local miss from the peer whose cache holds the key (see the module docstring).

    Parameters
    ----------
    link : Link or None
        How to reach peers and the scheduler (:meth:`of_client` builds one for a client;
        TieredCachePlugin one per worker). None: a detached tier that never asks.
    watermarks : Watermarks, optional
        The invalidations this process knows of (a worker's); a client has none.
    router : TransferRouter, optional
        Default: the process's :func:`~swarmstore.network.default_router`.
    timeout, quarantine, interval : float, optional
        ``swarmstore.cache.peer-timeout``, ``peer-quarantine``, ``peer-directory-interval``.
    on_fill : callable, optional
        Called with ``(ns, key)`` after a fill from the backing store (the summary's).

    Notes
    -----
    Thread-safe; ``get`` runs on any loop (calls hop to the link's), ``get_sync`` in any
    thread but the link's loop thread (there it is a miss). Pickles detached.
    """

    name = "peer"
    supports_sync = True
    #: fills record a digest of their bytes (a peer's answer carries it)
    records_digests = True

    def __init__(
        self,
        link: Link | None,
        watermarks: Watermarks | None = None,
        *,
        router: TransferRouter | None = None,
        timeout: float | str | None = None,
        quarantine: float | str | None = None,
        interval: float | str | None = None,
        on_fill: Callable[[str, str], None] | None = None,
    ) -> None:
        self.link = link
        self.watermarks = watermarks
        self.router = router if router is not None else default_router()
        self.timeout = float(config.value("cache.peer-timeout", timeout))
        self.quarantine = float(config.value("cache.peer-quarantine", quarantine))
        self.interval = float(config.value("cache.peer-directory-interval", interval))
        self.on_fill = on_fill
        self.directory = Directory()
        self.bad: dict[str, float] = {}  #: peer address -> monotonic time it is trusted again
        self._listed_at: float | None = None
        self._listing: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self.asked = self.hits = self.hit_bytes = self.misses = self.failures = 0
        self.corrupt = self.unguessed = self.remote_first = 0

    @classmethod
    def of_client(cls, client: Client, **kwargs: Any) -> PeerTier:
        """A peer tier for reads made on a client (or any process holding a Client)."""
        return cls(Link.of_client(client), **kwargs)

    def __repr__(self) -> str:
        return f"PeerTier({self.directory!r}, hits={self.hits})"

    def __reduce__(self) -> Any:
        return (PeerTier, (None,))

    # -- the tier protocol --------------------------------------------------------------

    def ticket(self, ns: str, key: str) -> float:
        return time.perf_counter()  # taken just before the backing read: put() times it

    async def get(self, ns: str, key: str, span: Span) -> Entry | None:
        """The value from a peer, or None (no guess, the remote is faster, or it failed)."""
        if self.link is None:
            return None
        fut, started = self._refresh()
        if self._listed_at is None:
            await self._wait(fut)  # the first listing
        addr = self._choose(ns, key)
        if addr is None and started and fut is not None and not fut.done():
            await self._wait(fut)  # this read found the listing due: the key may be in it
            addr = self._choose(ns, key)
        if addr is None:
            self.unguessed += 1
            return None
        return await self._ask(addr, ns, key, span)

    def get_sync(self, ns: str, key: str, span: Span) -> Entry | None:
        link = self.link
        if link is None or link.on_loop():
            return None  # a wait here would block the loop the answer needs
        # the caller's QoS class goes with the read to the link's loop (a fresh context)
        coro = self._in_class(current_qos(), ns, key, span)
        fut = asyncio.run_coroutine_threadsafe(coro, link.loop)
        try:
            return fut.result(2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            return None

    async def _in_class(self, cls: str, ns: str, key: str, span: Span) -> Entry | None:
        with qos(cls):
            return await self.get(ns, key, span)

    def put_sync(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool:
        """Not kept here; the backing read that filled ``entry`` is timed for the router."""
        if isinstance(ticket, float):
            seconds = time.perf_counter() - ticket
            self.router.observe(remote_source(ns), seconds, entry.nbytes)
        if self.on_fill is not None and entry.data is not None:
            self.on_fill(ns, key)
        return False

    async def put(self, ns: str, key: str, span: Span, entry: Entry, ticket: Any) -> bool:
        return self.put_sync(ns, key, span, entry, ticket)

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None:
        pass  # nothing held here; the write's invalidation reaches the peers' own tiers

    async def evict(self, ns: str, key: str, *, prefix: bool = False) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {
            "asked": self.asked,
            "hits": self.hits,
            "hit_bytes": self.hit_bytes,
            "misses": self.misses,
            "failures": self.failures,
            "corrupt": self.corrupt,
            "quarantined": sum(until > time.monotonic() for until in list(self.bad.values())),
            "unguessed": self.unguessed,
            "remote_first": self.remote_first,
            "workers": len(self.directory.summaries),
        }

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    # -- who holds what ------------------------------------------------------------------

    async def _wait(self, fut: concurrent.futures.Future[None] | None) -> None:
        if fut is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), self.timeout)
        except Exception as e:  # no scheduler answer: the guesses we have
            logger.debug("Peer directory not refreshed: %r", e)

    def _refresh(self) -> tuple[concurrent.futures.Future[None] | None, bool]:
        """``(listing in flight or None, whether this call started it)``: one is started
        when the last is older than ``peer-directory-interval``."""
        assert self.link is not None
        with self._lock:
            if self._listing is not None and not self._listing.done():
                return self._listing, False
            due = self._listed_at is None or time.monotonic() - self._listed_at >= self.interval
            if not due:
                return None, False
            self._listing = asyncio.run_coroutine_threadsafe(self._list(), self.link.loop)
            return self._listing, True

    async def _list(self) -> None:
        assert self.link is not None
        try:
            known = dict(self.directory.digests)
            listing = await asyncio.wait_for(self.link.directory(known), self.timeout)
            self.directory.update(listing)
        except Exception as e:  # a slow or gone scheduler: the old view, until the next
            logger.debug("Peer directory refresh failed: %r", e)
        self._listed_at = time.monotonic()

    def _choose(self, ns: str, key: str) -> str | None:
        """The peer to ask, or None: no plausible holder, or the router ranks remote first."""
        assert self.link is not None
        now = time.monotonic()
        exclude = {a for a, until in list(self.bad.items()) if until > now}
        if self.link.me is not None:
            exclude.add(self.link.me)
        choice = choose(self.router, ns, self.directory.guesses(ns, key, exclude))
        if choice is _REMOTE:
            self.remote_first += 1
            return None
        return choice  # type: ignore[return-value]

    # -- one peer attempt ----------------------------------------------------------------

    async def _ask(self, addr: str, ns: str, key: str, span: Span) -> Entry | None:
        self.asked += 1
        msg = {
            "ns": ns,
            "key": key,
            "span": span_to_wire(span),
            "after": self.watermarks.snapshot() if self.watermarks is not None else {},
            "cls": current_qos(),
        }
        src, entry, failures = await self.router.fetch(
            [addr], lambda a: self._attempt(a, key, msg), name=peer_source, size=_nbytes
        )
        if src is None or entry is None:
            if any(not isinstance(e, KeyError) for e in failures.values()):
                self.failures += 1
            else:
                self.misses += 1
            return None
        self.hits += 1
        self.hit_bytes += entry.nbytes
        return entry

    async def _attempt(self, addr: str, key: str, msg: dict[str, Any]) -> Entry:
        reg = self.router.registry
        deadline = min(self.timeout, reg.deadline(reg.entry(peer_source(addr)), None))
        assert self.link is not None
        try:
            async with asyncio.timeout(deadline):
                reply = await self.link.get(addr, **msg)
        except TimeoutError as e:
            raise DeadlineExceeded(
                f"peer {addr} did not answer {key!r} within {deadline:.3g} s"
            ) from e
        except Exception as e:
            if is_transport_error(e):
                raise NodeUnavailable(f"peer {addr} failed reading {key!r}: {e!r}") from e
            raise PeerMiss(f"peer {addr} could not serve {key!r}: {e!r}") from e
        return self._verified(addr, key, reply)

    def _verified(self, addr: str, key: str, reply: Any) -> Entry:
        """The entry of a ``hit`` answer whose bytes match their digest; else raise."""
        status = reply.get("status") if isinstance(reply, dict) else None
        if status != "hit":
            raise PeerMiss(f"peer {addr}: {status or 'no answer'} for {key!r}")
        data, digest = reply.get("data"), reply.get("digest")
        if not isinstance(data, bytes) or not isinstance(digest, int):
            raise PeerMiss(f"peer {addr}: malformed answer for {key!r}")
        if xxhash.xxh3_64_intdigest(data) != digest:
            self.corrupt += 1
            self.bad[addr] = time.monotonic() + self.quarantine
            logger.warning("Peer %s served bytes of %r that fail their checksum", addr, key)
            raise ChecksumMismatch(f"peer {addr}: bytes of {key!r} fail their xxh3 checksum")
        token = reply.get("token")
        return Entry(data, float(reply.get("filled_at") or 0.0), token, digest)


def choose(router: TransferRouter, ns: str, guesses: list[str]) -> str | object | None:
    """The decision of a read: which guessed peer to ask, ``_REMOTE`` when the router ranks
    the backing store first, or None when no guess's circuit admits a request.

    The router orders the peers' sources and the backing store's by expected time at the
    typical size of its reads; while the backing store is unmeasured, peers go first.
    """
    clock = router.clock()
    admitted = [a for a in guesses if router.registry.entry(peer_source(a)).circuit.admits(clock)]
    if not admitted:
        return None
    size = router.runner.typical
    remote = remote_source(ns)
    known = router.registry.entry(remote).stats.expected(size) is not None
    pool: list[Any] = [*admitted, _REMOTE] if known else admitted

    def name(s: Any) -> str:
        return remote if s is _REMOTE else peer_source(s)

    return router.order(pool, name, nbytes=size)[0]


def _nbytes(entry: Entry) -> int:
    return entry.nbytes
