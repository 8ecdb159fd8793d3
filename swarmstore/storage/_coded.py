"""The store's operations on erasure-coded keys: get, head, put, create, delete.

:class:`~swarmstore.storage.ReplicatedStore` calls these for every key its
:class:`~swarmstore.storage._fragments.CodingPolicy` codes. Deletes reuse the replicated
delete unchanged (tombstones are whole records, not fragments) through :class:`CodedView`,
which gives it the coded key's quorums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmstore import _events
from swarmstore.errors import FragmentsUnavailable
from swarmstore.network import qos
from swarmstore.storage._coded_maint import converge_coded
from swarmstore.storage._coded_read import CodedRead
from swarmstore.storage._coded_write import put_coded
from swarmstore.storage._fragments import refuse_fragment
from swarmstore.storage._verified import resolve_range
from swarmstore.storage._write import delete

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._fragments import Coding
    from swarmstore.storage._integrity import Record
    from swarmstore.storage._node import Node

__all__ = [
    "CodedView",
    "create_coded",
    "delete_coded",
    "get_coded",
    "head_coded",
    "put_coded",
    "refuse_fragment",
]


class CodedView:
    """The store, with the quorums of one coded key's delete: its phase 1 hears ``m + 1``
    nodes (at most ``m`` lost fragments, so one of them holds data whenever any
    acknowledged value is there: a delete is never skipped as a no-op over a loss), and
    its tombstones need the coded write quorum."""

    def __init__(self, store: Coordinator, coding: Coding) -> None:
        self._store, self._coding = store, coding

    def quorums(self, targets: int) -> tuple[int, int]:
        return min(self._coding.m + 1, targets), min(self._coding.w, targets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def get_coded(
    store: Coordinator, key: str, coding: Coding, byte_range: ByteRequest | None
) -> bytes | None:
    """The value (or ``byte_range`` of it) of a coded key; None when absent or deleted."""
    read = CodedRead(store, key, coding, want_data=True)
    d, value = await read.run()
    if store.read_repair:
        repair_behind(store, key, read.behind(d))
    if value is None:
        return None
    start, stop = resolve_range(byte_range, len(value))
    return value if (start, stop) == (0, len(value)) else value[start:stop]


async def head_coded(store: Coordinator, key: str, coding: Coding) -> tuple[int, Record] | None:
    """``(logical size, a fragment record)`` of the newest version; None when absent."""
    d, _ = await CodedRead(store, key, coding, want_data=False).run()
    if d.verdict != "value":
        return None
    record = next(a.record for a in d.chosen.values() if a.record is not None)
    size = record.fragment.length if record.fragment is not None else record.size
    return size, record


def repair_behind(store: Coordinator, key: str, bad: list[Node]) -> None:
    """A degraded read: rebuild the missing, corrupt or stale fragments in the background."""
    if not bad or key in store._repairing:
        return
    _events.emit("read-repair", {"key": key, "nodes": {n.name: "fragment" for n in bad}})
    store._repairing.add(key)
    store._spawn(_repair(store, key))


async def _repair(store: Coordinator, key: str) -> None:
    try:
        with qos("bulk"):
            await converge_coded(store, key)
    finally:
        store._repairing.discard(key)


async def create_coded(store: Coordinator, key: str, data: bytes, coding: Coding) -> None:
    """Write unless the key holds a value. Not atomic for coded keys: two racing creators
    may both write, and the higher version wins (replicated keys keep atomic creates)."""
    try:
        if await head_coded(store, key, coding) is not None:
            return
    except FragmentsUnavailable:
        return  # something is there, not readable now: never overwrite it
    await put_coded(store, key, data, coding)


async def delete_coded(store: Coordinator, key: str, coding: Coding) -> None:
    """Versioned tombstones on the key's ``k + m`` nodes, at the coded write quorum."""
    await delete(CodedView(store, coding), key)  # type: ignore[arg-type]
