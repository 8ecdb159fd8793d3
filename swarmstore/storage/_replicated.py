"""ReplicatedStore: a zarr v3 store that keeps R verified copies of every key."""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
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

from swarmstore import _events, config
from swarmstore.errors import ChecksumMismatch, ConfigError, QuorumError, ReplicaUnavailable
from swarmstore.hashing import Member, Rendezvous
from swarmstore.network import TransferRouter, qos
from swarmstore.storage._handoff import replay
from swarmstore.storage._hints import HintLog
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import Node, check_key, node_from
from swarmstore.storage._verified import Missing as _Missing
from swarmstore.storage._verified import fetch_full, fetch_range

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence

    from zarr.core.buffer import BufferPrototype

__all__ = ["ReplicatedStore"]


def _name(node: Node) -> str:
    return node.name


class ReplicatedStore(Store):
    """Spread zarr keys over ``nodes``, ``replicas`` verified copies each.

    - Placement: weighted rendezvous hashing; replicas in distinct zones when possible.
    - Writes: staged on every replica in parallel, published once ``write_quorum``
      (default: majority of ``replicas``) staged; fewer, and nothing changes
      (:class:`QuorumError`). A replica that missed a write gets a durable hint and
      is not read for that key until the hint is replayed.
    - Reads: one replica, chosen by the transfer router, verified against its xxh3
      record; a missing, corrupt or unreachable replica fails over to the next and is
      repaired in the background. Bytes that fail their checksum are never returned.
    - Each node holds exactly the bytes zarr wrote under each key: any single node opens
      with plain zarr. Checksums travel with the objects (xattrs, S3 metadata).
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_writes: bool = False  # type: ignore[assignment]

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
    ) -> None:
        super().__init__(read_only=read_only)
        if isinstance(nodes, (str, bytes)) or not nodes:
            raise ConfigError("ReplicatedStore needs a non-empty list of nodes")
        self.nodes: list[Node] = [node_from(n, storage_options=storage_options) for n in nodes]
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"node names must be unique, got {names}")
        self.replicas = int(config.get("storage.replicas") if replicas is None else replicas)
        if not 1 <= self.replicas <= len(self.nodes):
            raise ConfigError(f"replicas={self.replicas} needs 1..{len(self.nodes)} (the nodes)")
        wq = config.get("storage.write-quorum") if write_quorum is None else write_quorum
        self.write_quorum = int(wq) if wq is not None else self.replicas // 2 + 1
        if not 1 <= self.write_quorum <= self.replicas:
            raise ConfigError(f"write_quorum={self.write_quorum} needs 1..replicas")
        rr = config.get("storage.read-repair") if read_repair is None else read_repair
        self.read_repair = bool(rr)
        self.min_block = config.get_bytes("storage.verify-block-size", min_block) or 1 << 20
        self.ring = Rendezvous(Member(n.name, n.weight, n.zone) for n in self.nodes)
        self._by_name = {n.name: n for n in self.nodes}
        self._rank_cache: dict[str, tuple[tuple[Node, ...], tuple[Node, ...]]] = {}
        self.router = router if router is not None else TransferRouter()
        self._state_dir = state_dir
        self.hints = HintLog(self._default_state_dir() if state_dir is None else state_dir)
        self._background: set[asyncio.Task[Any]] = set()
        self._replaying: set[str] = set()
        self.hints_replayed = 0  # hints applied by this store since it was built

    # --- identity, pickling ----------------------------------------------------------------
    def _default_state_dir(self) -> pathlib.Path:
        base = config.get("storage.state-dir")
        root = (
            pathlib.Path(base)
            if base
            else pathlib.Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser()
            / "swarmstore"
        )
        ident = xxhash.xxh3_64_hexdigest("\0".join(sorted(n.name for n in self.nodes)).encode())
        return root / f"store-{ident}"

    def _init_kwargs(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "replicas": self.replicas,
            "write_quorum": self.write_quorum,
            "state_dir": self._state_dir,
            "read_only": self.read_only,
            "read_repair": self.read_repair,
            "min_block": self.min_block,
        }

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self._init_kwargs()))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReplicatedStore)
            and self.nodes == other.nodes
            and (self.replicas, self.write_quorum, self.read_only)
            == (other.replicas, other.write_quorum, other.read_only)
        )

    def __hash__(self) -> int:
        return hash(tuple(n.name for n in self.nodes))

    def __repr__(self) -> str:
        names = ", ".join(n.name for n in self.nodes)
        return f"ReplicatedStore([{names}], replicas={self.replicas}, w={self.write_quorum})"

    __str__ = __repr__

    def with_read_only(self, read_only: bool = False) -> Self:
        kwargs = {**self._init_kwargs(), "read_only": read_only, "router": self.router}
        return type(self)(**kwargs)

    async def _open(self) -> None:
        await super()._open()
        for name in self.hints.nodes():
            self._spawn(self._replay(self._by_name[name])) if name in self._by_name else None

    async def aclose(self) -> None:
        """Finish background work and release node connections (S3 HTTP sessions)."""
        await self.flush()
        for n in self.nodes:
            await n.aclose()

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        super().close()

    # --- placement ---------------------------------------------------------------------------
    def targets(self, key: str) -> list[Node]:
        """The nodes that should hold ``key``, most preferred first."""
        return list(self._ranked(key)[0])

    def _ranked(self, key: str) -> tuple[tuple[Node, ...], tuple[Node, ...]]:
        """(the key's replica nodes, the other nodes), both in preference order; cached,
        since zarr reads the same chunk keys again and again."""
        got = self._rank_cache.get(key)
        if got is None:
            ranked = [self._by_name[m.name] for m in self.ring.rank(key)]
            got = (tuple(ranked[: self.replicas]), tuple(ranked[self.replicas :]))
            if len(self._rank_cache) >= 65536:
                self._rank_cache.clear()
            self._rank_cache[key] = got
        return got

    # --- background work -----------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        """Wait for background repairs and hint replays started so far."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- reads ----------------------------------------------------------------------------------
    async def _fetch_full(self, node: Node, key: str) -> tuple[bytes, Record | None]:
        return await fetch_full(node, key)

    async def _fetch_range(self, node: Node, key: str, byte_range: ByteRequest) -> bytes:
        return await fetch_range(node, key, byte_range, self.min_block)

    async def _locate(
        self, key: str, attempt: Any
    ) -> tuple[Node | None, Any, dict[Node, BaseException]]:
        """Run ``attempt`` on the key's replicas (router order), then on the other nodes."""
        primary, rest = self._ranked(key)
        usable = [n for n in primary if not self.hints.blocks_read(n.name, key)]
        src, result, failures = await self.router.fetch(usable, attempt, name=_name)
        if src is None and rest:
            others = [n for n in rest if not self.hints.blocks_read(n.name, key)]
            src, result, more = await self.router.fetch(others, attempt, name=_name)
            failures.update(more)
        return src, result, failures

    def _absent_or_raise(self, key: str, failures: dict[Node, BaseException]) -> None:
        """No replica answered with data: decide between "absent" and "unreadable"."""
        unreachable = [n for n, e in failures.items() if not isinstance(e, _Missing)]
        corrupt = [n for n, e in failures.items() if isinstance(e, ChecksumMismatch)]
        if corrupt or (unreachable and len(unreachable) >= self.write_quorum):
            _events.emit("replica-unavailable", {"key": key, "tried": _whys(failures)})
            raise ReplicaUnavailable(key, {n.name: _why(e) for n, e in failures.items()})
        if failures and not any(isinstance(e, _Missing) for e in failures.values()):
            _events.emit("replica-unavailable", {"key": key, "tried": _whys(failures)})
            raise ReplicaUnavailable(key, {n.name: _why(e) for n, e in failures.items()})

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
        await self._ensure_open()
        check_key(key)
        if byte_range is None:
            src, result, failures = await self._locate(key, lambda n: self._fetch_full(n, key))
        else:
            src, result, failures = await self._locate(
                key, lambda n: self._fetch_range(n, key, byte_range)
            )
        self._after_read(key, src, result if byte_range is None else None, failures)
        if src is None:
            self._absent_or_raise(key, failures)
            return None
        data = result[0] if byte_range is None else result
        return prototype.buffer.from_bytes(data)

    def _after_read(
        self, key: str, src: Node | None, full: Any, failures: dict[Node, BaseException]
    ) -> None:
        if src is None or not self.read_repair:
            return
        primary = set(self.targets(key))
        bad = [
            n
            for n, e in failures.items()
            if n in primary and isinstance(e, (_Missing, ChecksumMismatch))
        ]
        if bad:
            why = {n.name: _why(failures[n]) for n in bad}
            _events.emit("read-repair", {"key": key, "nodes": why})
            self._spawn(self._repair_key(key, bad, full))

    async def _repair_key(
        self, key: str, bad: list[Node], full: tuple[bytes, Record | None] | None = None
    ) -> int:
        """Rewrite ``key`` on ``bad`` nodes from a verified copy; returns copies written."""
        with qos("bulk"):
            if full is None or full[1] is None:
                src, full, _ = await self._locate(key, lambda n: self._fetch_full(n, key))
                if src is None:
                    return 0
            data, record = full
            record = record or Record.of(data, self.min_block)
            done = 0
            for node in bad:
                try:
                    await self.router.send(
                        node, lambda n: n.write(key, data, record), name=_name, nbytes=len(data)
                    )
                    done += 1
                except OSError:
                    continue
            return done

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self._head(key) is not None

    async def _head(self, key: str) -> tuple[int, Record | None] | None:
        await self._ensure_open()
        check_key(key)

        async def attempt(n: Node) -> tuple[int, Record | None]:
            got = await n.head(key)
            if got is None:
                raise _Missing(key)
            return got

        src, result, failures = await self._locate(key, attempt)
        if src is None:
            self._absent_or_raise(key, failures)
            return None
        return result  # type: ignore[no-any-return]

    async def cache_token(self, key: str) -> str | None:
        """A token that changes whenever ``key``'s value does (its checksum record), or
        None when absent: lets a TieredStore with ``validate=True`` revalidate exactly."""
        head = await self._head(key)
        if head is None:
            return None
        size, record = head
        return record.encode() if record is not None else f"unrecorded:{size}"

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
        await self._ensure_open()
        if not isinstance(value, Buffer):
            raise TypeError(
                f"ReplicatedStore.set(): `value` must be a Buffer instance. "
                f"Got an instance of {type(value)} instead."
            )
        check_key(key)
        await self.put(key, value.to_bytes())

    async def put(self, key: str, data: bytes, record: Record | None = None) -> list[Node]:
        """Write raw bytes to the key's replicas; returns the nodes that acknowledged."""
        record = record or Record.of(data, self.min_block)
        targets = self.targets(key)

        async def prepare(n: Node) -> Any:
            return await self.router.send(
                n, lambda n: n.prepare(key, data, record), name=_name, nbytes=len(data)
            )

        staged = await asyncio.gather(*(prepare(n) for n in targets), return_exceptions=True)
        ready = [(n, p) for n, p in zip(targets, staged, strict=True) if not _failed(p)]
        failures = {n: p for n, p in zip(targets, staged, strict=True) if _failed(p)}
        _reraise_bugs(failures.values())
        if len(ready) < self.write_quorum:
            await asyncio.gather(*(n.abort(p) for n, p in ready), return_exceptions=True)
            _events.emit("quorum-missed", self._missed(key, "set", len(ready), failures))
            raise QuorumError(key, len(ready), self.write_quorum, _whys(failures))
        done = await asyncio.gather(
            *(self.router.send(n, lambda n, p=p: n.commit(p), name=_name) for n, p in ready),
            return_exceptions=True,
        )
        acked = [n for (n, _), r in zip(ready, done, strict=True) if not _failed(r)]
        failures.update({n: r for (n, _), r in zip(ready, done, strict=True) if _failed(r)})
        _reraise_bugs(failures.values())
        self._note_outcome(key, "set", acked, failures)
        if len(acked) < self.write_quorum:
            _events.emit("quorum-missed", self._missed(key, "set", len(acked), failures))
            raise QuorumError(key, len(acked), self.write_quorum, _whys(failures))
        return acked

    def _missed(
        self, key: str, op: str, acked: int, failures: dict[Node, BaseException], needed: int = 0
    ) -> dict[str, Any]:
        """The fields of a ``quorum-missed`` event (swarmstore._events)."""
        needed = needed or self.write_quorum
        return {"key": key, "op": op, "acked": acked, "needed": needed, "failures": _whys(failures)}

    def _note_outcome(
        self, key: str, op: str, acked: list[Node], failures: dict[Node, BaseException]
    ) -> None:
        for n in failures:
            self.hints.add(n.name, key, op)
        for n in acked:
            self.hints.discard(n.name, key)
            if self.hints.pending(n.name) and n.name not in self._replaying:
                self._spawn(self._replay(n))  # the node answers again: catch it up

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Write ``value`` unless ``key`` exists; of racing writers exactly one wins.

        Each replica does an atomic conditional create (``os.link``, S3 ``IfNoneMatch``,
        a dict check); a writer wins with ``write_quorum`` creations, which at most one
        writer can gather when the quorum is a majority. A writer that falls short takes
        its creations back; after a split vote (nobody won) the writers retry after a
        random pause.
        """
        self._check_writable()
        await self._ensure_open()
        check_key(key)
        data = value.to_bytes()
        record = Record.of(data, self.min_block)
        targets = self.targets(key)
        for attempt in range(8):
            results = await asyncio.gather(
                *(
                    self.router.send(n, lambda n: n.create(key, data, record), name=_name)
                    for n in targets
                ),
                return_exceptions=True,
            )
            created = [n for n, r in zip(targets, results, strict=True) if r is True]
            existed = [n for n, r in zip(targets, results, strict=True) if r is False]
            failures = {n: r for n, r in zip(targets, results, strict=True) if _failed(r)}
            _reraise_bugs(failures.values())
            if len(created) >= self.write_quorum:
                self._note_outcome(key, "set", created, {**failures, **dict.fromkeys(existed)})
                return
            await asyncio.gather(
                *(self.router.send(n, lambda n: n.delete(key), name=_name) for n in created),
                return_exceptions=True,
            )
            if len(existed) >= self.write_quorum:
                return  # somebody else's value holds a quorum: the key exists
            if len(created) + len(existed) < self.write_quorum:
                _events.emit("quorum-missed", self._missed(key, "create", len(created), failures))
                raise QuorumError(key, len(created), self.write_quorum, _whys(failures))
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # split vote
        _events.emit("quorum-missed", self._missed(key, "create", 0, {}))
        raise QuorumError(key, 0, self.write_quorum, {"*": "conditional create kept colliding"})

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()
        await self._ensure_open()
        check_key(key)
        await self._everywhere(key, "delete", lambda n: n.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        self._check_writable()
        await self._ensure_open()
        check_key(prefix, prefix=True)
        prefix = prefix.rstrip("/")
        await self._everywhere(prefix, "delete_dir", lambda n: n.delete_dir(prefix))

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        await self._ensure_open()
        await self._everywhere("", "delete_dir", lambda n: n.store.clear())

    async def _everywhere(self, key: str, op: str, action: Any) -> None:
        """Apply ``action`` on every node (copies may sit outside the replica set)."""
        results = await asyncio.gather(
            *(self.router.send(n, action, name=_name) for n in self.nodes),
            return_exceptions=True,
        )
        acked = [n for n, r in zip(self.nodes, results, strict=True) if not _failed(r)]
        failures = {n: r for n, r in zip(self.nodes, results, strict=True) if _failed(r)}
        _reraise_bugs(failures.values())
        self._note_outcome(key, op, acked, failures)
        needed = self.write_quorum if op == "delete" else 1
        primary = set(self.targets(key)) if op == "delete" else set(self.nodes)
        if len([n for n in acked if n in primary]) < min(needed, len(primary)):
            _events.emit("quorum-missed", self._missed(key, op, len(acked), failures, needed))
            raise QuorumError(key, len(acked), needed, _whys(failures))

    # --- hinted handoff --------------------------------------------------------------------------
    async def _replay(self, node: Node) -> int:
        """Apply ``node``'s missed operations from healthy replicas; returns hints replayed."""
        return await replay(self, node)

    async def replay_hints(self) -> int:
        """Replay every pending hint whose node is reachable; returns how many were applied.

        Replays already running in the background are waited for (and counted), so on
        return every reachable node has caught up.
        """
        before = self.hints_replayed
        await self._ensure_open()
        await self.flush()
        for name in self.hints.nodes():
            if name in self._by_name:
                await self._replay(self._by_name[name])
        return self.hints_replayed - before

    # --- listing ---------------------------------------------------------------------------------
    async def _union(self, op: str, prefix: str) -> list[str]:
        async def one(n: Node) -> list[str]:
            return await (n.list_prefix(prefix) if op == "prefix" else n.list_dir(prefix))

        results = await asyncio.gather(*(one(n) for n in self.nodes), return_exceptions=True)
        ok = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        _reraise_bugs(errors)
        if not ok:
            raise ReplicaUnavailable(
                prefix, {n.name: _why(e) for n, e in zip(self.nodes, errors, strict=False)}
            )
        return sorted(set().union(*ok))

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._union("prefix", ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._union("prefix", prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._union("dir", prefix):
            yield key

    # --- maintenance (swarmstore.storage._maintenance) ------------------------------------------
    async def scrub(self, progress: Any = None) -> Any:
        """Verify every replica of every key; see :func:`swarmstore.storage.scrub`."""
        from swarmstore.storage._maintenance import scrub

        return await scrub(self, progress=progress)

    async def repair(self, progress: Any = None) -> Any:
        """Restore ``replicas`` healthy copies of every key (:func:`swarmstore.storage.repair`)."""
        from swarmstore.storage._maintenance import repair

        return await repair(self, progress=progress)

    async def rebalance(self, progress: Any = None, *, limit: int | None = None) -> Any:
        """Move keys where placement says after nodes joined or left; resumable."""
        from swarmstore.storage._maintenance import rebalance

        return await rebalance(self, progress=progress, limit=limit)


def _rebuild(cls: type[ReplicatedStore], kwargs: dict[str, Any]) -> ReplicatedStore:
    # An unpickled copy (a Dask task's) shares the process's router: what one task
    # learns about the nodes, and the QoS budget, serve every task on that worker.
    from swarmstore.network import default_router

    return cls(**kwargs, router=default_router())


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)


def _reraise_bugs(errors: Iterable[BaseException]) -> None:
    """Node failures are OSErrors (and missing keys KeyErrors); anything else is a bug or
    bad input and must reach the caller, not be counted as a dead node."""
    for e in errors:
        if not isinstance(e, (OSError, KeyError)):
            raise e


def _why(e: BaseException) -> str:
    if isinstance(e, _Missing):
        return "missing"
    return f"{type(e).__name__}: {e}"


def _whys(failures: dict[Node, BaseException]) -> dict[str, str]:
    return {n.name: _why(e) for n, e in failures.items()}
