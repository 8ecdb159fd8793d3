"""StoreNode: any zarr v3 store as a node (a ``WrapperStore`` chain, an ``FsspecStore`` over
gcs, az, http or another filesystem, zarr's ``ObjectStore`` over an obstore store without
object attributes, a user's own store; obstore's S3, GCS, Azure and memory stores get an
:class:`~swarmstore.storage.ObstoreNode` instead).

A generic store has no metadata slot per object and no compare-and-swap, so:

- **Data** sits under each key exactly as zarr wrote it (one node opens with plain zarr).
- **Records** sit in a sidecar, ``.swarmstore/r/<xxh3-128 of the key>``, holding the key
  and one record, or two while a write is in flight: the record the data matched before
  and the record of the bytes being written. A write puts the sidecar with both, then
  the data, then the sidecar with the new record only. Whenever the data changes, the
  sidecar names a record it matches, so a reader (and a repair it starts) never mistakes
  a write in flight for rot. A reader of a two-record sidecar returns the record its
  bytes match; ``state`` reports the older one, so a node caught mid-write (or crashed
  there) looks behind and is caught up by hints and repair, never ahead.
- **Tombstones** are ``.swarmstore/t/<hash>`` holding the key and the tomb record.
- **Compare-and-swap** holds per key within a process (an asyncio lock around the
  compare and the writes). Writers in other processes are not excluded: a write that
  lands late can regress this one node's copy, which verification and read repair then
  treat like any stale replica (see docs/storage.md, "Any store as a node").

Costs: a read is two requests (the data and the sidecar, sent together), a write three.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

import xxhash
from zarr.abc.store import OffsetByteRequest, RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import ChecksumMismatch
from swarmstore.storage._integrity import Record
from swarmstore.storage._keylock import exclusive
from swarmstore.storage._node import (
    META,
    Node,
    Outcome,
    Pending,
    Read,
    State,
    check_key,
    finishes_delete,
    hidden,
    may_replace,
    occupied,
    refusal,
    tomb_name,
)

if TYPE_CHECKING:
    from collections.abc import Hashable

    from zarr.abc.store import Store

    from swarmstore.storage._integrity import Version

__all__ = ["StoreNode", "store_name"]

_PROTO = default_buffer_prototype()


def _protocol(fs: Any) -> str:
    fs = getattr(fs, "sync_fs", fs)  # zarr's AsyncFileSystemWrapper: the wrapped one's
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def store_name(store: Store) -> str:
    """A name for ``store`` that every process computes alike (it places keys): the
    filesystem's protocol and path for an FsspecStore, else the store's ``str``."""
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(store, "path"):
        return f"{_protocol(fs)}://{store.path.strip('/')}"
    return str(store)


def _sidecar(key: str) -> str:
    return f"{META}/r/{xxhash.xxh3_128_hexdigest(key.encode())}"


def _decode(text: str, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    try:
        record = Record.decode(text, key)
    except ValueError as e:
        return None, f"unreadable checksum record ({e})"
    if record.deleted != tomb:
        return None, "a record of the wrong kind"
    return record, None


_NONE = "-"  # the "before" slot of a sidecar mid-write when the data had no record


class _Sidecar:
    """A parsed record sidecar: ``key`` and a record, or mid-write ``key``, the record the
    data had before (``-``: none) and the record being written."""

    def __init__(self, raw: bytes | None, key: str) -> None:
        self.before: Record | None = None
        self.record: Record | None = None
        self.writing = False
        self.corrupt: str | None = None
        if raw is None:
            return
        try:
            lines = raw.decode("ascii").split("\n")
        except UnicodeDecodeError:
            lines = []
        if len(lines) not in (2, 3) or lines[0] != key:
            self.corrupt = "unreadable checksum record sidecar"
            return
        self.writing = len(lines) == 3
        texts = [t for t in lines[1:] if t != _NONE or not self.writing]
        records = [_decode(t, key, False) for t in texts]
        if any(r is None for r, _ in records):
            self.corrupt = next(why for r, why in records if r is None)
            return
        if self.writing and len(records) == 2:
            self.before = records[0][0]
        self.record = records[-1][0]

    @property
    def settled(self) -> Record | None:
        """The record ``state`` reports: mid-write, the one from before (None: unrecorded),
        so a node caught mid-write looks behind, never ahead."""
        return self.before if self.writing else self.record

    def matching(self, data: bytes, start: int, end: int | None) -> Record | None:
        """The record to check the bytes ``[start, end)`` against: mid-write, the new one
        if they verify against it, else the one from before."""
        if not self.writing or self.record is None:
            return self.record
        stop = self.record.size if end is None else min(end, self.record.size)
        try:
            self.record.verify(data, start, stop)
        except ChecksumMismatch:
            return self.before
        return self.record


def _body(key: str, record: Record, before: Record | bool | None = False) -> bytes:
    """A sidecar: ``key`` and ``record``; mid-write (``before`` given) also the record
    the data had before, or ``-``."""
    lines = [key, record.encode(key)]
    if before is not False:
        lines.insert(1, before.encode(key) if isinstance(before, Record) else _NONE)
    return "\n".join(lines).encode("ascii")


class StoreNode(Node):
    """Any zarr store as a replica location; see the module docstring for the layout."""

    def __init__(
        self,
        store: Store,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(
            name or store_name(store), weight=weight, zone=zone, host=host or socket.gethostname()
        )
        self.store = store

    def place(self) -> str:
        return store_name(self.store)

    def __reduce__(self) -> Any:
        attrs = {"name": self.name, "weight": self.weight, "zone": self.zone, "host": self.host}
        return (_rebuild, (self.store, attrs))

    def _exclusive(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The compare and the swap of one key, one coroutine at a time in this process."""
        return exclusive(self.name, key)

    async def _get(self, key: str, byte_range: Any = None) -> bytes | None:
        buf = await self.store.get(key, _PROTO, byte_range)
        return None if buf is None else buf.to_bytes()

    async def _size(self, key: str) -> int | None:
        try:
            return await self.store.getsize(key)
        except (FileNotFoundError, KeyError):
            return None

    # --- reads -----------------------------------------------------------------------------
    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        check_key(key)
        rng = None
        if end is not None:
            rng = RangeByteRequest(start, end)
        elif start:
            rng = OffsetByteRequest(start)
        data, raw = await asyncio.gather(self._get(key, rng), self._get(_sidecar(key)))
        if data is None:
            return None
        side = _Sidecar(raw, key)
        if side.corrupt is not None:
            raise ChecksumMismatch(f"{self.name}/{key}: {side.corrupt}")
        record = side.matching(data, start, end)
        if record is not None and start == 0 and end is None:
            return Read(data, record, len(data))
        size = record.size if record is not None else await self._size(key)
        return Read(data, record, len(data) if size is None else size)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        check_key(key)
        size, raw = await asyncio.gather(self._size(key), self._get(_sidecar(key)))
        side = _Sidecar(raw, key) if size is not None else _Sidecar(None, key)
        record, corrupt = side.settled, side.corrupt
        if tomb is False or (tomb is None and size is not None and corrupt is None):
            return State(size, record, None, tomb_known=False, corrupt=corrupt)
        t, why = await self._tomb(key)
        if why is not None and (size is None or corrupt is not None):
            corrupt = corrupt or why
        return State(size, record, t, corrupt=corrupt)

    async def _tomb(self, key: str) -> tuple[Record | None, str | None]:
        raw = await self.meta_get(tomb_name(key))
        if raw is None:
            return None, None
        head, _, text = raw.partition(b"\n")
        if head != key.encode() or not text:
            return None, "unreadable tombstone"
        return _decode(text.decode("ascii", "replace"), key, True)

    # --- writes ----------------------------------------------------------------------------
    async def prepare(self, key: str, data: bytes) -> Pending:
        return Pending(check_key(key), bytes(data), await self.state(key, tomb=True))

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        key = pending.key
        async with self._exclusive(key):
            cur = await self.state(key, tomb=True)
            if create and occupied(cur):
                return "exists"
            if not force and not may_replace(pending.seen, cur, record.version, heal):
                return refusal(cur)
            before = cur.record if cur.has_data else None
            await self._put(_sidecar(key), _body(key, record, before))
            await self._put(key, pending.data)
            await self._put(_sidecar(key), _body(key, record))
            if cur.tomb is not None and cur.tomb.version < record.version:
                await self.meta_delete(tomb_name(key))
        return "written"

    async def _put(self, key: str, data: bytes) -> None:
        await self.store.set(key, _PROTO.buffer.from_bytes(data))

    async def _drop(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, KeyError):
            await self.store.delete(key)

    async def abort(self, pending: Pending) -> None:
        return None  # nothing is staged before commit

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        async with self._exclusive(check_key(key)):
            cur = await self.state(key, tomb=True)
            if finishes_delete(cur, tomb):
                pass  # a delete left halfway: its tombstone is there, the data goes now
            elif not may_replace(seen, cur, tomb.version):
                return "superseded"
            else:  # the tombstone first: a crash after it leaves data the tombstone outranks
                body = key.encode() + b"\n" + tomb.encode(key).encode()
                await self.meta_put(tomb_name(key), body)
            await self._drop(key)
            await self._drop(_sidecar(key))
        return "written"

    async def unbury(self, key: str, tomb: Record) -> None:
        async with self._exclusive(check_key(key)):
            held, _ = await self._tomb(key)
            if held is not None and held.version == tomb.version:
                await self.meta_delete(tomb_name(key))

    async def remove(self, key: str, version: Version | None = None) -> bool:
        async with self._exclusive(check_key(key)):
            cur = await self.state(key, tomb=False)
            if cur.size is None:
                return False
            held = cur.record.version if cur.record is not None else None
            if version is not None and held != version:
                return False
            await self._drop(key)
            await self._drop(_sidecar(key))
        return True

    # --- metadata area ---------------------------------------------------------------------
    async def meta_put(self, name: str, body: bytes) -> None:
        await self._put(f"{META}/{name}", bytes(body))

    async def meta_get(self, name: str) -> bytes | None:
        return await self._get(f"{META}/{name}")

    async def meta_list(self, area: str) -> list[str]:
        lead = f"{META}/"
        return sorted([k[len(lead) :] async for k in self.store.list_prefix(f"{lead}{area}/")])

    async def meta_delete(self, name: str) -> None:
        await self._drop(f"{META}/{name}")

    async def tombstones(self) -> list[str]:
        keys = []
        for name in await self.meta_list("t"):
            body = await self.meta_get(name) or b""
            head = body.partition(b"\n")[0].decode("utf-8", "replace")
            with contextlib.suppress(Exception):
                if tomb_name(check_key(head)) == name:
                    keys.append(head)
        return sorted(keys)

    # --- listing ---------------------------------------------------------------------------
    async def list_keys(self, prefix: str) -> list[str]:
        return sorted([k async for k in self.store.list_prefix(prefix) if not hidden(k)])

    async def list_entries(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        names = [n async for n in self.store.list_dir(base)]
        return sorted(n for n in names if n and not (not base and n == META))

    async def aclose(self) -> None:
        return None


def _rebuild(store: Store, attrs: dict[str, Any]) -> StoreNode:
    return StoreNode(store, **attrs)
