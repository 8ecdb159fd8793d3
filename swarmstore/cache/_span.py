"""Which part of a value a cache entry holds: the whole value, or one byte request.

zarr asks for whole values (``byte_range=None``) and for byte ranges (sharded arrays read
the shard index with a suffix request and inner chunks with range requests). Each distinct
request is one cache entry, named by its *span*; a whole-value entry also answers every
byte request of its key by slicing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest

__all__ = ["WHOLE", "Span", "slice_whole", "span_name", "span_of"]

#: ``None`` for the whole value, else ``("r", start, end)``, ``("o", offset)`` or ``("s", n)``.
type Span = tuple[str, int] | tuple[str, int, int] | None

WHOLE: Span = None


def span_of(byte_range: ByteRequest | None) -> Span:
    """The span of a zarr byte request; anything else is refused like zarr's stores do."""
    if byte_range is None:
        return None
    if isinstance(byte_range, RangeByteRequest):
        return ("r", byte_range.start, byte_range.end)
    if isinstance(byte_range, OffsetByteRequest):
        return ("o", byte_range.offset)
    if isinstance(byte_range, SuffixByteRequest):
        return ("s", byte_range.suffix)
    raise ValueError(f"Unexpected byte_range, got {byte_range}.")


def span_name(span: Span) -> str:
    """A short text form, used in disk-tier file headers: ``""``, ``"r:0-10"``, ``"s:16"``."""
    if span is None:
        return ""
    if span[0] == "r":
        return f"r:{span[1]}-{span[2]}"  # type: ignore[misc]
    return f"{span[0]}:{span[1]}"


def slice_whole(data: bytes | memoryview, span: Span) -> bytes | memoryview:
    """The part of a whole value that ``span`` asks for (zarr ``MemoryStore`` semantics)."""
    if span is None:
        return data
    kind = span[0]
    if kind == "r":
        return data[span[1] : span[2]]  # type: ignore[misc]
    if kind == "o":
        return data[span[1] :]
    return data[max(0, len(data) - span[1]) :]
