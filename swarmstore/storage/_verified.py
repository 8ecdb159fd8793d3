"""Reading one replica and proving its bytes: full and ranged reads against the record.

A full read checks every block and the length. A ranged read is widened to whole blocks,
each block verified, then sliced; with the configured block size known in advance this is
one request for objects of up to 128 blocks, else a ``head`` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Record
    from swarmstore.storage._node import Node

__all__ = ["Missing", "fetch_full", "fetch_range", "resolve_range"]


class Missing(KeyError):
    """This replica does not hold the key (try the next; not a health failure)."""


async def fetch_full(node: Node, key: str) -> tuple[bytes, Record | None]:
    """The whole value of ``key`` on ``node``, verified when it has a record."""
    got = await node.read(key)
    if got is None:
        raise Missing(key)
    data, record, _ = got
    if record is not None:
        record.verify(data, what=f"{node.name}/{key}")
    return data, record


async def fetch_range(node: Node, key: str, byte_range: ByteRequest, min_block: int) -> bytes:
    """The requested bytes of ``key`` on ``node``, every block they touch verified."""
    what = f"{node.name}/{key}"
    if isinstance(byte_range, (RangeByteRequest, OffsetByteRequest)):
        # One request: guess the block size; right for objects up to 128 blocks.
        start = byte_range.start if isinstance(byte_range, RangeByteRequest) else byte_range.offset
        a = (start // min_block) * min_block
        b = None
        if isinstance(byte_range, RangeByteRequest):
            b = -(-byte_range.end // min_block) * min_block
        got = await node.read(key, a, b)
        if got is None:
            raise Missing(key)
        data, record, size = got
        stop = size if b is None else min(byte_range.end, size)  # type: ignore[union-attr]
        if record is None:
            return data[start - a : stop - a]
        if record.block == min_block and (a < size or size == 0):
            record.verify(data, a, size if b is None else min(b, size), what)
            return data[start - a : max(start, stop) - a]
    head = await node.head(key)
    if head is None:
        raise Missing(key)
    size, record = head
    start, stop = resolve_range(byte_range, size)
    if record is None:
        got = await node.read(key, start, stop)
        if got is None:
            raise Missing(key)
        return got[0]
    a, b = record.span(start, stop)
    got = await node.read(key, a, b) if b > a else (b"", record, size)
    if got is None:
        raise Missing(key)
    record.verify(got[0], a, b, what)
    return got[0][start - a : stop - a]


def resolve_range(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    """``[start, stop)`` of a byte request against an object of ``size`` bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(max(byte_range.end, byte_range.start), size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")
