"""Reading one replica and proving its bytes: full and ranged reads against the record.

A full read checks every block, the length and the object's size against the record. A
ranged read is widened to whole blocks, each block verified, then sliced; with the
configured block size known in advance this is one request for objects of up to 128
blocks, else a ``state`` first. A replica whose size differs from its record's (truncated,
extended) fails with :class:`ChecksumMismatch` whatever the range, never ``ValueError``.

The same logic runs asynchronously (``fetch``) or, for nodes with a sync path, in the
caller's thread (``fetch_now``), so a local read and its quorum probes share one thread hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest

from swarmstore.errors import ChecksumMismatch, is_transport_error

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Record
    from swarmstore.storage._node import Node, Read

__all__ = ["Got", "Missing", "Refused", "Unrecorded", "fetch", "fetch_now", "resolve_range"]


class Missing(KeyError):
    """This replica does not hold the key (try the next; not a health failure)."""


class Unrecorded(KeyError):
    """This replica holds bytes without a record: the lowest version, used only when no
    replica has a record. Not a health failure; the bytes ride along."""

    def __init__(self, key: str, data: bytes, size: int) -> None:
        super().__init__(key)
        self.data = data
        self.size = size


class Refused(KeyError):
    """The replica answered with an error that is not an outage (permission denied, a
    refused request): try the next replica; no verdict on the node's health."""

    def __init__(self, key: str, error: BaseException) -> None:
        super().__init__(key)
        self.error = error


@dataclass(frozen=True)
class Got:
    """Verified bytes of one replica (the requested range, or all) with its record."""

    data: bytes
    record: Record
    size: int


def _checked(got: Read | None, key: str, what: str) -> Read:
    if got is None:
        raise Missing(key)
    if got.record is not None and got.size != got.record.size:
        raise ChecksumMismatch(
            f"{what}: the object holds {got.size} bytes, its record says {got.record.size}"
        )
    return got


def _full(got: Read | None, key: str, what: str) -> Got:
    got = _checked(got, key, what)
    if got.record is None:
        raise Unrecorded(key, got.data, got.size)
    got.record.verify(got.data, what=what)
    return Got(got.data, got.record, got.size)


def _guess(byte_range: ByteRequest, min_block: int) -> tuple[int, int | None] | None:
    """The block-aligned span to read in one request, when the block size can be guessed."""
    if isinstance(byte_range, RangeByteRequest):
        a = (byte_range.start // min_block) * min_block
        return a, -(-byte_range.end // min_block) * min_block
    if isinstance(byte_range, OffsetByteRequest):
        return (byte_range.offset // min_block) * min_block, None
    return None


def _from_guess(
    got: Read | None, key: str, byte_range: ByteRequest, span: tuple[int, int | None], block: int
) -> bytes | None:
    """The requested bytes out of a guessed span, or None when the guess was wrong."""
    what = key
    got = _checked(got, key, what)
    a, b = span
    start, stop = resolve_range(byte_range, got.size)
    if got.record is None:
        raise Unrecorded(key, got.data[max(0, start - a) : max(0, stop - a)], got.size)
    if start >= got.size:
        return b""  # past the end: nothing to verify beyond the size check
    if got.record.block != block:
        return None
    end = got.size if b is None else min(b, got.size)
    got.record.verify(got.data, a, end, what)
    return got.data[start - a : max(start, stop) - a]


def _exact(
    byte_range: ByteRequest, st_size: int | None, record: Record | None, key: str, what: str
) -> tuple[int, int, int, int]:
    """``(start, stop, a, b)``: the requested span and the blocks covering it."""
    if st_size is None:
        raise Missing(key)
    if record is not None and st_size != record.size:
        raise ChecksumMismatch(
            f"{what}: the object holds {st_size} bytes, its record says {record.size}"
        )
    start, stop = resolve_range(byte_range, st_size)
    if record is None:
        return start, stop, start, stop
    a, b = record.span(start, stop)
    return start, stop, a, b


def _slice(got: Read | None, key: str, start: int, stop: int, a: int, b: int, what: str) -> Got:
    got = _checked(got, key, what)
    if got.record is None:
        raise Unrecorded(key, got.data[start - a : stop - a], got.size)
    got.record.verify(got.data, a, b, what)
    return Got(got.data[start - a : stop - a], got.record, got.size)


async def fetch(node: Node, key: str, byte_range: ByteRequest | None, min_block: int) -> Got:
    """The verified bytes of ``key`` on ``node`` (all, or ``byte_range``)."""
    what = f"{node.name}/{key}"
    try:
        if byte_range is None:
            return _full(await node.read(key), key, what)
        guess = _guess(byte_range, min_block)
        if guess is not None:
            got = await node.read(key, guess[0], guess[1])
            data = _from_guess(got, key, byte_range, guess, min_block)
            if data is not None:
                assert got is not None and got.record is not None
                return Got(data, got.record, got.size)
        st = await node.state(key, tomb=False)
        if st.corrupt is not None:
            raise ChecksumMismatch(f"{what}: {st.corrupt}")
        start, stop, a, b = _exact(byte_range, st.size, st.record, key, what)
        got = await node.read(key, a, b) if b > a else _empty(st.size, st.record)
        return _slice(got, key, start, stop, a, b, what)
    except OSError as e:
        _refuse(e, key)
        raise


def fetch_now(node: Node, key: str, byte_range: ByteRequest | None, min_block: int) -> Got:
    """:func:`fetch` for a node with a sync path (``node.supports_sync``), in this thread."""
    what = f"{node.name}/{key}"
    try:
        if byte_range is None:
            return _full(node.read_now(key), key, what)  # type: ignore[attr-defined]
        guess = _guess(byte_range, min_block)
        if guess is not None:
            got = node.read_now(key, guess[0], guess[1])  # type: ignore[attr-defined]
            data = _from_guess(got, key, byte_range, guess, min_block)
            if data is not None:
                return Got(data, got.record, got.size)
        st = node.state_now(key, tomb=False)  # type: ignore[attr-defined]
        if st.corrupt is not None:
            raise ChecksumMismatch(f"{what}: {st.corrupt}")
        start, stop, a, b = _exact(byte_range, st.size, st.record, key, what)
        got = node.read_now(key, a, b) if b > a else _empty(st.size, st.record)  # type: ignore[attr-defined]
        return _slice(got, key, start, stop, a, b, what)
    except OSError as e:
        _refuse(e, key)
        raise


def _empty(size: int | None, record: Record | None) -> Read:
    from swarmstore.storage._node import Read

    assert size is not None
    return Read(b"", record, size)


def _refuse(e: OSError, key: str) -> None:
    """Outages and checksum failures count against the node (the caller re-raises them);
    other OS errors (permission denied, a refused request) are the replica's answer:
    raise :class:`Refused`, so the read fails over with no verdict on the node's health."""
    if isinstance(e, ChecksumMismatch) or is_transport_error(e):
        return
    raise Refused(key, e) from e


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
