"""MemoryNode: an in-process dict (a zarr ``MemoryStore``); records, tombstones and the
metadata area live in dicts beside it. Every operation runs without an ``await`` between
its compare and its swap, so it is atomic within the process.

Records are kept encoded (the text an xattr would hold) and decoded against the key on
every read, so a memory node fails exactly as a directory does when a record is swapped,
stripped or flipped (the state machine's faults)."""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.errors import ChecksumMismatch
from swarmstore.storage._integrity import Record
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
)

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.storage._integrity import Version

__all__ = ["MemoryNode"]


@dataclass
class _Side:
    """What a memory node keeps beside zarr's dict."""

    records: dict[str, tuple[Any, str]] = field(default_factory=dict)
    tombs: dict[str, str] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)


_NAMED: dict[str, tuple[dict[str, Any], _Side]] = {}


class MemoryNode(Node):
    """A dict. A record counts only while the stored buffer is the very object it was
    written with, so a value written to the MemoryStore behind swarmstore's back reads as
    unrecorded rather than corrupt."""

    supports_sync = True
    inline_sync = True  # a dict lookup: no thread hop at all
    #: sync forms of the write steps (``prepare_now``, ``commit_now``...): see _syncwrite
    supports_sync_write = True

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
        side: _Side | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        super().__init__(
            name or f"memory://{id(self.store._store_dict):x}",
            weight=weight,
            zone=zone,
            host=host or socket.gethostname(),
        )
        self.side = side if side is not None else _Side()
        self.records = self.side.records  # the tests' backdoor to bit rot
        self._registered: str | None = None

    def place(self) -> str:
        return f"memory://{id(self.store._store_dict):x}"

    @classmethod
    def named(cls, label: str, **kwargs: Any) -> MemoryNode:
        """The process-wide memory node called ``label`` (``memory://label``)."""
        data, side = _NAMED.setdefault(label, ({}, _Side()))
        kwargs.setdefault("name", f"memory://{label}")
        node = cls(MemoryStore(data), side=side, **kwargs)
        node._registered = label
        return node

    def __reduce__(self) -> Any:
        if self._registered is not None:
            attrs = {"name": self.name, "weight": self.weight, "zone": self.zone}
            return (_named_node, (self._registered, attrs))
        return super().__reduce__()

    @property
    def _data(self) -> dict[str, Any]:
        return self.store._store_dict  # type: ignore[no-any-return]

    # --- sync core -----------------------------------------------------------------------
    def _record(self, key: str, buf: Any) -> tuple[Record | None, str | None]:
        entry = self.side.records.get(key)
        if entry is None or entry[0] is not buf:
            return None, None
        return _decoded(entry[1], key, False)

    def read_now(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        buf = self._data.get(check_key(key))
        if buf is None:
            return None
        record, why = self._record(key, buf)
        if why is not None:
            raise ChecksumMismatch(f"{self.name}/{key}: {why}")
        data = buf.to_bytes()
        return Read(data[start:end], record, len(data))

    def state_now(self, key: str, *, tomb: bool | None = None) -> State:
        buf = self._data.get(check_key(key))
        size = None if buf is None else len(buf)
        record, corrupt = (None, None) if buf is None else self._record(key, buf)
        if tomb is False or (tomb is None and buf is not None and corrupt is None):
            return State(size, record, None, tomb_known=False, corrupt=corrupt)
        text = self.side.tombs.get(key)
        t, why = (None, None) if text is None else _decoded(text, key, True)
        if why is not None and (size is None or corrupt is not None):
            corrupt = corrupt or why
        return State(size, record, t, corrupt=corrupt)

    def prepare_now(self, key: str, data: bytes) -> Pending:
        return Pending(check_key(key), bytes(data), self.state_now(key, tomb=True))

    def commit_now(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        key = pending.key
        cur = self.state_now(key, tomb=True)
        if create and occupied(cur):
            return "exists"
        if not force and not may_replace(pending.seen, cur, record.version, heal):
            return refusal(cur)
        buf = default_buffer_prototype().buffer.from_bytes(pending.data)
        self._data[key] = buf
        self.side.records[key] = (buf, record.encode(key))
        if cur.tomb is not None and cur.tomb.version < record.version:
            del self.side.tombs[key]
        return "written"

    def abort_now(self, pending: Pending) -> None:
        return None

    def bury_now(self, key: str, tomb: Record, seen: State) -> Outcome:
        cur = self.state_now(key, tomb=True)
        if not finishes_delete(cur, tomb) and not may_replace(seen, cur, tomb.version):
            return "superseded"
        self._data.pop(key, None)
        self.side.records.pop(key, None)
        self.side.tombs[key] = tomb.encode(key)
        return "written"

    def unbury_now(self, key: str, tomb: Record) -> None:
        held = self.state_now(key, tomb=True).tomb
        if held is not None and held.version == tomb.version:
            del self.side.tombs[key]

    def remove_now(self, key: str, version: Version | None = None) -> bool:
        buf = self._data.get(check_key(key))
        if buf is None:
            return False
        record, _ = self._record(key, buf)
        if version is not None and (record.version if record else None) != version:
            return False
        del self._data[key]
        self.side.records.pop(key, None)
        return True

    # --- async API -----------------------------------------------------------------------
    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        return self.read_now(key, start, end)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        return self.state_now(key, tomb=tomb)

    async def prepare(self, key: str, data: bytes) -> Pending:
        return self.prepare_now(key, data)

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        return self.commit_now(pending, record, create=create, force=force, heal=heal)

    async def abort(self, pending: Pending) -> None:
        return None

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        return self.bury_now(key, tomb, seen)

    async def unbury(self, key: str, tomb: Record) -> None:
        self.unbury_now(key, tomb)

    async def remove(self, key: str, version: Version | None = None) -> bool:
        return self.remove_now(key, version)

    async def meta_put(self, name: str, body: bytes) -> None:
        self.side.meta[name] = bytes(body)

    async def meta_get(self, name: str) -> bytes | None:
        return self.side.meta.get(name)

    async def meta_list(self, area: str) -> list[str]:
        return sorted(n for n in self.side.meta if n.startswith(area + "/"))

    async def meta_delete(self, name: str) -> None:
        self.side.meta.pop(name, None)

    async def tombstones(self) -> list[str]:
        return sorted(self.side.tombs)

    async def list_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in list(self._data) if k.startswith(prefix) and not hidden(k))

    async def list_entries(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        lead = f"{base}/" if base else ""
        names = {k[len(lead) :].split("/", 1)[0] for k in list(self._data) if k.startswith(lead)}
        return sorted(n for n in names if n and not (not base and n == META))


@functools.lru_cache(maxsize=4096)
def _decoded(text: str, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    """(record, None) or (None, why it cannot be trusted); cached (texts repeat)."""
    try:
        record = Record.decode(text, key)
    except ValueError as e:
        return None, f"unreadable checksum record ({e})"
    if record.deleted != tomb:
        return None, "a record of the wrong kind"
    return record, None


def _named_node(name: str, attrs: dict[str, Any]) -> MemoryNode:
    return MemoryNode.named(name, **attrs)
