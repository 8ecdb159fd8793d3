"""Who holds what: the workers' summaries and the owner ring, as a reader sees them.

Each worker sends a Bloom filter of its cached keys with its heartbeats (a worker metric,
``_peerserve.METRIC``); the scheduler keeps the latest in ``WorkerState.metrics``. The
:class:`PeerDirectory` scheduler plugin answers ``swarmstore_peer_directory`` with every
worker's address, ring identity, threads and summary, and a reader's :class:`Directory`
turns that into guesses: the workers whose summary may hold the key, the key's owner on
the chunk-affinity ring (the worker whose cache the placement fills) first.

The ring is compute's (``swarmstore.compute.placement``): rendezvous hashing over the
workers known by ``name:<name>`` (or their address when the name is the address), weighted
by threads, of the chunk's store key. The cache may not import compute, so the rule is
restated here and a test holds the two to the same owners.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import xxhash
from distributed.diagnostics.plugin import SchedulerPlugin

from swarmstore.cache._peersummary import Summary, key_hash, positions
from swarmstore.hashing import Member, Rendezvous

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["LIST", "Directory", "PeerDirectory", "ring_identity"]

logger = logging.getLogger(__name__)

LIST = "swarmstore_peer_directory"


def ring_identity(name: Any, address: str) -> str:
    """What the chunk ring knows a worker by (compute's ``WorkerInfo.key``)."""
    text = str(name)
    return address if text == address else f"name:{text}"


class PeerDirectory(SchedulerPlugin):
    """Answer ``swarmstore_peer_directory``: every worker and its latest cache summary."""

    name = "swarmstore-peer-directory"
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.listed = 0

    def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers[LIST] = self.listing

    def listing(
        self, comm: Any = None, known: dict[str, int] | None = None
    ) -> list[dict[str, Any]]:
        """Every worker; its summary only when it differs from the reader's (``known``:
        address -> digest of the summary the reader holds), so an idle cluster's listings
        stay small however many workers it has."""
        scheduler = self.scheduler
        assert scheduler is not None
        self.listed += 1
        known = known or {}
        out = []
        for ws in list(scheduler.workers.values()):
            raw = (ws.metrics or {}).get("swarmstore-peer-summary")
            digest = None if raw is None else xxhash.xxh3_64_intdigest(raw)
            same = digest is not None and known.get(ws.address) == digest
            out.append({
                "address": ws.address,
                "identity": ring_identity(ws.name, ws.address),
                "nthreads": ws.nthreads,
                "digest": digest,
                "summary": None if same else raw,
                "same": same,
            })  # fmt: skip
        return out


class Directory:
    """A reader's view of the workers: the owner ring and each worker's summary.

    Examples
    --------
    >>> d = Directory()
    >>> d.update([{"address": "tcp://a:1", "identity": "name:a", "nthreads": 1,
    ...            "summary": Summary.of([("ns", "x")], 256).to_bytes()},
    ...           {"address": "tcp://b:1", "identity": "name:b", "nthreads": 1, "summary": None}])
    >>> d.guesses("ns", "x", exclude=set())  # b has sent no summary: not a peer yet
    ['tcp://a:1']
    >>> d.guesses("ns", "y", exclude=set())
    []
    """

    def __init__(self) -> None:
        self.ring: Rendezvous | None = None
        self.by_identity: dict[str, str] = {}
        self.summaries: dict[str, Summary | None] = {}
        #: digest of each summary held, sent back so unchanged ones are not sent again
        self.digests: dict[str, int] = {}
        self.updates = 0

    def __repr__(self) -> str:
        return f"Directory({len(self.summaries)} workers, {self.updates} updates)"

    def update(self, listing: list[dict[str, Any]]) -> None:
        """Replace the view with a scheduler's ``swarmstore_peer_directory`` answer."""
        by_identity: dict[str, str] = {}
        summaries: dict[str, Summary | None] = {}
        digests: dict[str, int] = {}
        members = []
        for w in listing:
            addr, ident = str(w["address"]), str(w["identity"])
            by_identity[ident] = addr
            members.append(Member(ident, weight=float(max(int(w.get("nthreads") or 1), 1))))
            if w.get("same") and addr in self.summaries:
                summaries[addr] = self.summaries[addr]  # unchanged since the last listing
            else:
                summaries[addr] = _summary(w.get("summary"), addr)
            if summaries[addr] is not None and isinstance(w.get("digest"), int):
                digests[addr] = w["digest"]
        self.ring = Rendezvous(members) if members else None
        self.by_identity, self.summaries, self.digests = by_identity, summaries, digests
        self.updates += 1

    def owner(self, key: str) -> str | None:
        """The worker the chunk ring gives ``key`` (the placement's first choice)."""
        if self.ring is None:
            return None
        return self.by_identity.get(self.ring.owner(key).name)

    def guesses(self, ns: str, key: str, exclude: set[str]) -> list[str]:
        """Workers whose summary may hold ``key``, the ring's owner first.

        A worker without a summary (no peer server, or no heartbeat yet) is never guessed:
        on a first pass nothing is cached anywhere, and asking the owner regardless would
        cost every read a failed attempt.
        """
        h, pos = key_hash(ns, key), {}
        out = []
        for addr, summary in self.summaries.items():
            if addr in exclude or summary is None:
                continue
            if summary.bits not in pos:
                pos[summary.bits] = positions(h, summary.bits)
            if summary.has(pos[summary.bits]):
                out.append(addr)
        owner = self.owner(key) if len(out) > 1 else None
        if owner in out:
            out.remove(owner)
            out.insert(0, owner)
        return out


def _summary(raw: Any, addr: str) -> Summary | None:
    if raw is None:
        return None
    try:
        return Summary.from_bytes(raw)
    except ValueError as e:
        logger.debug("Ignoring the cache summary of %s: %s", addr, e)
        return None
