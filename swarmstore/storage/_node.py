"""Storage nodes: one backing location that holds whole replicas, with their checksums.

A node stores under each zarr key exactly the bytes zarr wrote, so a single node opens
with plain zarr, and keeps each object's versioned checksum :class:`Record` *with* the
object (xattr, S3 user metadata): written in the same atomic step, read in the same
request. Tombstones and hints live in the node's metadata area, the reserved prefix
``.swarmstore/``, which exists only while it holds something.

Every mutation is two-phase. ``prepare`` learns what the node holds for the key (its
:class:`State`, "phase 1") and stages the bytes; ``commit`` makes them visible only if
the node still holds an older version (a compare-and-swap: ``flock`` + rename on a local
directory, ``If-Match``/``If-None-Match`` on S3), so a commit that lands late never
regresses a newer value.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from swarmstore.errors import InvalidKeyError, NodeRefused
from swarmstore.storage._integrity import LOWEST
from swarmstore.storage._keys import META, NAME_MAX, check_key, hidden, tomb_name

if TYPE_CHECKING:
    from collections.abc import Hashable

    from zarr.abc.store import Store

    from swarmstore.storage._integrity import Record, Version

__all__ = [
    "META",
    "NAME_MAX",
    "Node",
    "Pending",
    "Read",
    "State",
    "check_key",
    "finishes_delete",
    "hidden",
    "may_replace",
    "tomb_name",
]

Outcome = Literal["written", "superseded", "exists", "gone"]


class StaleCommit(NodeRefused):
    """A commit refused because what its phase 1 saw is gone (see :func:`refusal`): it
    counts towards no write quorum, and the write starts over with a fresh phase 1."""


def refusal(cur: State) -> Outcome:
    """Why a commit that :func:`may_replace` refused did nothing, from what the node holds.

    "superseded": the node holds this version or a newer one; the write is overtaken and
    still counts (a newer value stands where it would have). "gone": the node holds
    nothing, though phase 1 saw something there (a delete collected meanwhile). The staged
    write cannot tell a tombstone older than itself from a newer delete that came and went,
    so it must not write -- and must not count either: that commit stored nothing and no
    newer value stands in its place. (Counted, it made a write acknowledged by every node
    while none held it: found by the coded machine, a read repair collecting a delete's
    tombstones between the phases of the next write.)
    """
    return "superseded" if cur.version is not None else "gone"


def acknowledged(outcome: Outcome, node: Node, key: str) -> Outcome:
    """A commit's outcome as a write quorum counts it: "gone" raises :class:`StaleCommit`."""
    if outcome == "gone":
        raise StaleCommit(f"{node.name}: {key!r} changed under the write (a delete collected)")
    return outcome


@functools.lru_cache(maxsize=4096)
def _name_hash(name: str) -> int:
    return hash(name)  # nodes are dict keys on every read: their hash is asked for often


@dataclass(frozen=True)
class State:
    """What one node holds for one key: its data object and its tombstone ("phase 1").

    ``size`` is None when there is no data object; ``record`` is None for data without
    a record (written by something else). ``tomb_known`` is False when the tombstone was
    not looked at (a node holding data: data present is taken as newer than any tombstone
    there; only a delete that crashed between its tombstone and the data's removal leaves
    older data under a tombstone, and the read quorum's other replicas outrank it).
    ``corrupt`` says why the answer cannot be trusted (an unreadable or foreign record, a
    directory where a file should be). ``token`` is the backend's compare-and-swap token
    (S3 ETags).
    """

    size: int | None = None
    record: Record | None = None
    tomb: Record | None = None
    tomb_known: bool = True
    corrupt: str | None = None
    token: Any = None

    @property
    def has_data(self) -> bool:
        return self.size is not None and self.corrupt is None

    @property
    def data_version(self) -> Version | None:
        if not self.has_data:
            return None
        return self.record.version if self.record is not None else LOWEST

    @property
    def tomb_version(self) -> Version | None:
        return self.tomb.version if self.tomb is not None else None

    @property
    def version(self) -> Version | None:
        """The node's effective version for the key: the newer of data and tombstone."""
        d, t = self.data_version, self.tomb_version
        if d is None or (t is not None and t > d):
            return t
        return d

    @property
    def live(self) -> bool:
        """Holds data that no tombstone on this node outranks."""
        d, t = self.data_version, self.tomb_version
        return d is not None and (t is None or d > t)


def may_replace(seen: State, cur: State, version: Version, heal: bool = False) -> bool:
    """The compare of every compare-and-swap: may a write at ``version``, staged when the
    node held ``seen``, replace what it holds now (``cur``)?

    Not when the node holds that version or a newer one; not when something phase 1 saw
    is gone (a delete whose tombstones were collected, a withdrawn creation: the staged
    write is stale). An unreadable (corrupt) replica is always replaced; with ``heal`` (a
    repair that proved the replica's bytes bad) so is one of the same version.
    """
    if cur.corrupt is not None:
        return True
    now = cur.version
    if now is not None:
        return now <= version if heal else now < version
    return seen.version is None or seen.corrupt is not None


def occupied(cur: State) -> bool:
    """Whether a create must answer "exists" on a node in state ``cur`` (read with its
    tombstone): it holds data no tombstone outranks, or data it cannot read (corrupt: its
    version is unknown). Data a newer tombstone outranks is a delete left halfway: absent."""
    if cur.size is None:
        return False
    return cur.corrupt is not None or cur.live


def finishes_delete(cur: State, tomb: Record) -> bool:
    """Whether ``cur`` is a delete at ``tomb``'s version left halfway: its tombstone is in
    place and older data is still there (a crash between writing the tombstone and
    removing the data). Burying again removes the data."""
    if cur.tomb is None or cur.tomb.version != tomb.version or cur.size is None:
        return False
    return cur.data_version is None or cur.data_version < tomb.version


@dataclass
class Pending:
    """A staged write: what ``prepare`` returned, for ``commit`` or ``abort``.

    ``seen`` is the node's state before the write (phase 1). ``error`` is set when the
    node answered phase 1 but could not stage the bytes (a full disk, a read-only mount):
    the answer still counts towards the read quorum, the write does not.
    """

    key: str
    data: bytes
    seen: State
    token: Any = None
    error: BaseException | None = None


class Read(NamedTuple):
    """Bytes ``[start, end)`` of one replica, its record (None: unrecorded) and full size
    (a tuple, so ``data, record, size = await node.read(key)`` unpacks it)."""

    data: bytes
    record: Record | None
    size: int


class Node(ABC):
    """One replica location. Subclasses implement the backend-specific operations."""

    #: sync variants of read/state (``read_now``/``state_now``) that a caller may run in
    #: one thread hop with other nodes' (local directories, memory)
    supports_sync: bool = False

    def __init__(
        self,
        name: str,
        *,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        self.name = name
        self.weight = weight
        self.zone = zone
        self.host = host
        self.store: Store  # a plain zarr view of the node, used for listing

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def place(self) -> str:
        """Where the data lives, alike in every process and host that reaches it (caches
        key a store by its nodes' places, never by their names, which users choose): a
        path, a bucket and prefix; never an endpoint, which differs from host to host
        (proxies, private endpoints) while the data is the same."""
        return self.name

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Node)
            and (self.name, self.weight, self.zone) == (other.name, other.weight, other.zone)
            and self.store == other.store
        )

    def __hash__(self) -> int:
        return _name_hash(self.name)

    # --- reads ---------------------------------------------------------------------------
    @abstractmethod
    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        """Bytes ``[start, end)`` of ``key`` (``end=None``: to the end); None when absent.

        Raises :class:`~swarmstore.errors.ChecksumMismatch` when the replica cannot be
        trusted (an unreadable or foreign record, a directory where the file should be).
        """

    @abstractmethod
    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        """What the node holds for ``key``. ``tomb``: look at the tombstone always (True),
        never (False), or only when there is no data object (None)."""

    async def head(self, key: str) -> tuple[int, Record | None] | None:
        """``(size, record)`` of ``key``'s data object without its bytes; None when absent."""
        st = await self.state(key, tomb=False)
        if st.corrupt is not None:
            from swarmstore.errors import ChecksumMismatch

            raise ChecksumMismatch(f"{self.name}/{key}: {st.corrupt}")
        return None if st.size is None else (st.size, st.record)

    # --- writes (two-phase, compare-and-swap) --------------------------------------------
    @abstractmethod
    async def prepare(self, key: str, data: bytes) -> Pending:
        """Phase 1 (the node's :class:`State`) and staging; nothing becomes visible."""

    @abstractmethod
    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        """Publish the staged bytes with ``record`` if :func:`may_replace` allows it.

        Returns "written", "superseded" (the node holds a version at least as new: the
        staged write is dropped), "gone" (what phase 1 saw is gone: :func:`refusal`) or,
        with ``create=True``, "exists" (data already there).
        ``heal=True`` also replaces the same version (a repair of bytes that failed their
        checksum); ``force=True`` publishes whatever the node holds (backdoors, tools).
        """

    @abstractmethod
    async def abort(self, pending: Pending) -> None:
        """Drop a staged write; must not raise for a write that was never staged."""

    @abstractmethod
    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        """Delete at ``tomb``'s version: remove older data, then keep the tombstone.

        "written", or "superseded" when the node holds a newer version (nothing done).
        """

    @abstractmethod
    async def unbury(self, key: str, tomb: Record) -> None:
        """Drop ``key``'s tombstone if it is still exactly ``tomb`` (garbage collection)."""

    @abstractmethod
    async def remove(self, key: str, version: Version | None = None) -> bool:
        """Remove ``key``'s data object if its version is ``version`` (None: whatever it
        holds); True when something was removed."""

    async def write(self, key: str, data: bytes, record: Record) -> None:
        """Publish ``data`` with ``record`` unconditionally (tests' backdoors, tools)."""
        pending = await self.prepare(key, data)
        if pending.error is not None:
            raise pending.error
        await self.commit(pending, record, force=True)

    # --- metadata area (tombstones, hints) -------------------------------------------------
    @abstractmethod
    async def meta_put(self, name: str, body: bytes) -> None:
        """Write ``.swarmstore/<name>``."""

    async def park(self, pending: Pending, name: str, body: bytes) -> None:
        """Write ``body`` (a shadow: a header, ``\\0``, then ``pending.data``) as
        ``.swarmstore/<name>``. A local directory links the staged file instead of
        writing the bytes again (:meth:`~._localdir.Dir.park`); ``meta_get`` returns
        ``body`` either way."""
        await self.meta_put(name, body)

    @abstractmethod
    async def meta_get(self, name: str) -> bytes | None:
        """Read ``.swarmstore/<name>``; None when absent."""

    @abstractmethod
    async def meta_list(self, area: str) -> list[str]:
        """Names (``area/...``) under ``.swarmstore/<area>/``; empty when none."""

    @abstractmethod
    async def meta_delete(self, name: str) -> None:
        """Remove ``.swarmstore/<name>`` (absent is fine), and the area once it is empty."""

    async def tombstones(self) -> list[str]:
        """The keys this node holds a tombstone for (read from the tombstones' bodies)."""
        keys = []
        for name in await self.meta_list("t"):
            body = await self.meta_get(name)
            try:
                key = (body or b"").decode()
                check_key(key)
            except (UnicodeDecodeError, InvalidKeyError):
                continue  # a torn or foreign file: not a tombstone of any key
            if tomb_name(key) == name:
                keys.append(key)
        return sorted(keys)

    # --- listing -------------------------------------------------------------------------
    @abstractmethod
    async def list_keys(self, prefix: str) -> list[str]:
        """Every data key under ``prefix`` (metadata area and temp files excluded)."""

    @abstractmethod
    async def list_entries(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (like ``Store.list_dir``), swarmstore's own hidden."""

    async def list_prefix(self, prefix: str) -> list[str]:
        return await self.list_keys(prefix)

    async def list_dir(self, prefix: str) -> list[str]:
        return await self.list_entries(prefix)

    async def prune(self, prefix: str) -> None:
        """Remove empty directories left under ``prefix`` (local directories only)."""
        return None

    async def ping(self) -> None:
        """Cheap reachability check; raises when the node is down."""
        await self.state("zarr.json", tomb=False)

    def allow_create(self, create: bool) -> None:
        """Whether a missing root may be created (local directories; see LocalNode)."""
        return None

    def root_exists(self) -> bool | None:
        """Whether the node's root exists (None: the backend has no such notion)."""
        return None

    def close(self) -> None:
        self.store.close()

    async def aclose(self) -> None:
        """Release connections; the node stays usable (they reopen on demand)."""
        return None
