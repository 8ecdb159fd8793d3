"""ReplicatedStore: a zarr v3 store that keeps R verified, versioned copies of every key."""

from __future__ import annotations

import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, Self

import xxhash
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer

from swarmstore import _events
from swarmstore._together import together
from swarmstore.errors import ConfigError, QuorumError
from swarmstore.hashing import Member, Rendezvous
from swarmstore.network import TransferRouter
from swarmstore.storage import _coded, _repairs
from swarmstore.storage._api import Maintained
from swarmstore.storage._create import create
from swarmstore.storage._fragments import CodingPolicy
from swarmstore.storage._handoff import replay
from swarmstore.storage._hints import HintLog
from swarmstore.storage._listing import Listed
from swarmstore.storage._node import check_key
from swarmstore.storage._read import QuorumRead
from swarmstore.storage._settings import allow_create, configure, default_state_dir
from swarmstore.storage._spec import node_from
from swarmstore.storage._syncsurface import SyncSurface
from swarmstore.storage._verified import Got
from swarmstore.storage._write import delete, grace, put

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterable, Sequence

    from zarr.core.buffer import BufferPrototype

    from swarmstore.storage._fragments import Coding
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Node

__all__ = ["ReplicatedStore"]


def _name(node: Node) -> str:
    return node.name


def _measure(result: Any) -> int:
    return len(result.data) if isinstance(result, Got) else 0


class ReplicatedStore(Maintained, SyncSurface, Listed, Store):
    """Spread zarr keys over ``nodes``, ``replicas`` verified, versioned copies each.

    - Placement: weighted rendezvous hashing; replicas in distinct zones when possible.
    - Versions, not clocks: a write learns the key's versions from a read quorum of its
      replicas and writes ``(max + 1, writer id)``; each replica applies it by
      compare-and-swap. ``write_quorum`` (W, default a majority) acknowledgements make
      it succeed; fewer raise :class:`QuorumError`, and each replica keeps the old value
      or the new one.
    - Reads: the value from the router's best replica plus the versions of the next
      ``Rq - 1`` (``Rq = R - W + 1``, so every read quorum meets every write quorum); the
      newest wins, checked against its key-bound xxh3 record. Stale, missing or corrupt
      replicas are repaired in the background. Bytes that fail their checksum are never
      returned, nor a value older than an acknowledged write.
    - Deletes leave versioned tombstones until every node applied them; missed writes
      leave hints on the nodes that acknowledged, which any host replays.
    - Each node holds exactly the bytes zarr wrote under each key: any single node opens
      with plain zarr. Checksums travel with the objects (xattrs, S3 metadata).

    ``create``: whether missing local node roots may be created: True, False, or None
    (default: only for a brand-new store, when none of its local roots exists yet).

    ``coding``: keys stored erasure-coded instead of replicated (docs/erasure.md):
    ``{"prefix/": (k, m)}``, one ``"k+m"``/``Coding`` for every key, or a
    :class:`~swarmstore.storage.CodingPolicy`; None reads ``storage.coding``. Metadata
    keys (``zarr.json``) stay replicated.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_writes: bool = False  # type: ignore[assignment]
    supports_atomic_create: bool = True

    def __init__(
        self,
        nodes: Sequence[Any],
        replicas: int | None = None,
        write_quorum: int | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        router: TransferRouter | None = None,
        read_only: bool = False,
        read_repair: bool | None = None,
        min_block: int | str | None = None,
        storage_options: dict[str, Any] | None = None,
        read_quorum: int | None = None,
        create: bool | None = None,
        coding: Any = None,
    ) -> None:
        super().__init__(read_only=read_only)
        if isinstance(nodes, (str, bytes)) or not nodes:
            raise ConfigError("ReplicatedStore needs a non-empty list of nodes")
        self.nodes: list[Node] = [node_from(n, storage_options=storage_options) for n in nodes]
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"node names must be unique, got {names}")
        configure(self, replicas, write_quorum, read_quorum, read_repair, min_block)
        self.coding = CodingPolicy.of(coding)
        for prefix, c in self.coding.rules:
            if c.n > len(self.nodes):
                raise ConfigError(
                    f"coding {c} for {prefix!r} needs {c.n} nodes, got {len(self.nodes)}"
                )
        self.ring = Rendezvous(Member(n.name, n.weight, n.zone) for n in self.nodes)
        self._by_name = {n.name: n for n in self.nodes}
        self._rank_cache: dict[str, tuple[tuple[Node, ...], tuple[Node, ...]]] = {}
        self.router = router if router is not None else TransferRouter()
        self._new_api = "measure" in inspect.signature(type(self.router).fetch).parameters
        self._state_dir = state_dir
        self.hints = HintLog(default_state_dir(self.nodes) if state_dir is None else state_dir)
        self.writer = int.from_bytes(os.urandom(8), "big") >> 1  # this instance's id
        self._counters: dict[str, int] = {}
        self._counting = threading.Lock()
        self._background: set[asyncio.Future[Any]] = set()
        self._laggards: set[asyncio.Future[Any]] = set()  # held, not waited for by flush
        self._replaying: set[str] = set()
        self._repairing: set[str] = set()
        self.hints_replayed = 0  # hints applied by this store since it was built
        self._create = create
        allow_create(self.nodes, create)

    # --- identity, pickling ----------------------------------------------------------------
    def _init_kwargs(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "replicas": self.replicas,
            "write_quorum": self.write_quorum,
            "read_quorum": self.read_quorum,
            "state_dir": self._state_dir,
            "read_only": self.read_only,
            "read_repair": self.read_repair,
            "min_block": self.min_block,
            "create": self._create,
            "coding": self.coding,
        }

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self._init_kwargs()))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReplicatedStore)
            and self.nodes == other.nodes
            and (self.replicas, self.write_quorum, self.read_only, self.coding)
            == (other.replicas, other.write_quorum, other.read_only, other.coding)
        )

    def __hash__(self) -> int:
        return hash(tuple(n.name for n in self.nodes))

    def cache_identity(self) -> str:
        """What caches know this store's data by (``swarmstore.cache``): where its nodes
        keep their data, not what they are called: two stores over different buckets may
        name their nodes alike, and must never share cached chunks."""
        return f"ReplicatedStore[{','.join(sorted(n.place() for n in self.nodes))}]"

    def __repr__(self) -> str:
        names = ", ".join(n.name for n in self.nodes)
        coded = f", coding={self.coding.as_arg()}" if self.coding else ""
        return f"ReplicatedStore([{names}], replicas={self.replicas}, w={self.write_quorum}{coded})"

    __str__ = __repr__

    def with_read_only(self, read_only: bool = False) -> Self:
        kwargs = {**self._init_kwargs(), "read_only": read_only, "router": self.router}
        return type(self)(**kwargs)

    async def _open(self) -> None:
        await super()._open()
        if self.hints.count():  # this host's own hints only: no node is listed here
            self._spawn(replay(self))

    async def aclose(self) -> None:
        """Finish background work and release node connections (S3 HTTP sessions, each
        closed on its own loop)."""
        await self.flush()
        for n in self.nodes:
            await n.aclose()

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        super().close()

    # --- placement, quorums, versions --------------------------------------------------------
    def targets(self, key: str) -> list[Node]:
        """The nodes that should hold ``key``, most preferred first."""
        return list(self._ranked(key)[0])

    def _ranked(self, key: str) -> tuple[tuple[Node, ...], tuple[Node, ...]]:
        """(the key's replica nodes, the other nodes), both in preference order; cached,
        since zarr reads the same chunk keys again and again."""
        got = self._rank_cache.get(key)
        if got is None:
            ranked = [self._by_name[m.name] for m in self.ring.rank(key)]
            coded = self.coding.for_key(key)
            n = self.replicas if coded is None else coded.n
            got = (tuple(ranked[:n]), tuple(ranked[n:]))
            if len(self._rank_cache) >= 65536:
                self._rank_cache.clear()
            self._rank_cache[key] = got
        return got

    def coding_for(self, key: str) -> Coding | None:
        """How ``key`` is coded (None: replicated)."""
        return self.coding.for_key(key)

    def quorums(self, targets: int) -> tuple[int, int]:
        """``(read quorum, write quorum)`` for a key with ``targets`` replicas."""
        return min(self.read_quorum, targets), min(self.write_quorum, targets)

    def next_version(self, key: str, seen: Iterable[Version]) -> Version:
        """One more than every counter seen, and than this instance's last for ``key``.

        Under a lock: sync writers (``set_sync``) run in many threads at once, and two of
        them must never stamp two values with the same version."""
        top = max((c for c, _ in seen), default=0)
        with self._counting:
            counter = max(1, top + 1, self._counters.get(key, 0) + 1)
            if len(self._counters) >= 65536:
                self._counters.clear()
            self._counters[key] = counter
        return (counter, self.writer)

    def grace(self, elapsed: float) -> float:
        return grace(elapsed, self._grace_cap)

    # --- errors --------------------------------------------------------------------------------
    @staticmethod
    def _reraise_bugs(results: Iterable[object]) -> None:
        """Node failures are OSErrors (and missing keys KeyErrors); anything else is a bug or
        bad input and must reach the caller, not be counted as a dead node."""
        for e in results:
            if isinstance(e, BaseException) and not isinstance(e, (OSError, KeyError)):
                raise e

    def _quorum_error(
        self, key: str, op: str, acked: int, needed: int, failures: dict[Node, BaseException]
    ) -> QuorumError:
        whys = {n.name: f"{type(e).__name__}: {e}" for n, e in failures.items()}
        _events.emit(
            "quorum-missed",
            {"key": key, "op": op, "acked": acked, "needed": needed, "failures": whys},
        )
        return QuorumError(key, acked, needed, whys)

    # --- reads ----------------------------------------------------------------------------------
    async def _fetch(
        self, nodes: Sequence[Node], attempt: Any, key: str, nbytes: int | None = None
    ) -> tuple[Node | None, Any, dict[Node, BaseException]]:
        """``router.fetch`` with the byte count when known (the router learns bandwidth)."""
        kwargs: dict[str, Any] = {"name": _name, "nbytes": nbytes}
        if self._new_api:
            kwargs.update(size=nbytes, measure=_measure)
        else:
            kwargs["size"] = _measure
        return await self.router.fetch(list(nodes), attempt, **kwargs)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        if byte_range is not None and not isinstance(
            byte_range, (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)
        ):
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            value = await _coded.get_coded(self, key, coded, byte_range)
            return None if value is None else prototype.buffer.from_bytes(value)
        verdict = await QuorumRead(self, key, byte_range, want_data=True).run()
        _coded.refuse_fragment(key, verdict.got)
        if self.read_repair:
            _repairs.after_read(self, key, verdict, full=byte_range is None)
        if verdict.got is not None:
            return prototype.buffer.from_bytes(verdict.got.data)
        if verdict.unrecorded is not None:
            return prototype.buffer.from_bytes(verdict.unrecorded)
        return None

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return list(await together(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def _head(self, key: str) -> tuple[int, Record | None] | None:
        """``(size, record)`` of the key's newest value by a quorum of versions; None if absent."""
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            return await _coded.head_coded(self, key, coded)
        verdict = await QuorumRead(self, key, None, want_data=False).run()
        _coded.refuse_fragment(key, verdict.got)
        if verdict.got is not None:
            return verdict.got.size, verdict.got.record
        if verdict.unrecorded is not None:
            return verdict.size or 0, None
        return None

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self._head(key) is not None

    async def cache_token(self, key: str) -> str | None:
        """A token that changes whenever ``key``'s value does (its version and content
        hash), or None when absent: lets a TieredStore revalidate exactly."""
        head = await self._head(key)
        if head is None:
            return None
        size, record = head
        if record is None:
            return f"unrecorded:{size}"
        digest = xxhash.xxh3_64_hexdigest(repr(record.hashes).encode())
        return f"{record.counter}.{record.writer:x}.{record.size}.{digest}"

    async def getsize(self, key: str) -> int:
        # docstring inherited
        head = await self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return head[0]

    # --- writes --------------------------------------------------------------------------------
    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(
                f"ReplicatedStore.set(): `value` must be a Buffer instance. "
                f"Got an instance of {type(value)} instead."
            )
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            await _coded.put_coded(self, key, value.to_bytes(), coded)
            return
        await put(self, key, value.to_bytes(), None)

    async def put(self, key: str, data: bytes, record: Record | None = None) -> list[Node]:
        """Write raw bytes (``record``: their checksum record, if already computed; its
        version is replaced); returns the nodes that acknowledged."""
        self._check_writable()
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            return await _coded.put_coded(self, key, bytes(data), coded)
        return await put(self, key, bytes(data), record)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Write ``value`` unless ``key`` exists; of racing writers exactly one wins, and
        once any returns, every read returns the winner's value
        (:mod:`swarmstore.storage._create`)."""
        self._check_writable()
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            await _coded.create_coded(self, key, value.to_bytes(), coded)
            return
        await create(self, key, value.to_bytes())

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()
        check_key(key)
        await self._ensure_open()
        if (coded := self.coding.for_key(key)) is not None:
            await _coded.delete_coded(self, key, coded)
            return
        await delete(self, key)


def _rebuild(cls: type[ReplicatedStore], kwargs: dict[str, Any]) -> ReplicatedStore:
    # An unpickled copy (a Dask task's) shares the process's router: what one task
    # learns about the nodes, and the QoS budget, serve every task on that worker.
    from swarmstore.network import default_router

    return cls(**kwargs, router=default_router())
