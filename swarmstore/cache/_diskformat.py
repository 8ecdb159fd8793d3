"""The disk tier's file format: one self-describing, self-checking file per cached value.

A file is ``prefix | header | bytes``:

- prefix (16 bytes): magic ``SWC2``, the header's length (u32) and its xxh3-64 (u64), so
  any flipped bit in the header is caught before a field of it is believed;
- header (JSON): the store namespace, key and span it holds (a reader compares them with
  what it asked for, so a file moved or swapped under another name is never served), the
  value's size, fill time, version token, the prefix-invalidation mark at its fill
  (``_diskgens``), and one xxh3-64 per 1 MiB block;
- the bytes. A reader verifies the blocks it returns, so bad bytes are never returned.

A file's name is derived from ``(ns, key, span)``: 16 hex digits of the key (its *stem*),
then 16 of the span, in a subdirectory named by the first three (4096 of them), so every
file of a key is found from the key alone (without the index) by listing one small
directory.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import xxhash

from swarmstore.cache._span import WHOLE, Span, span_name

__all__ = [
    "BLOCK",
    "Corrupt",
    "Header",
    "bounds",
    "decode_header",
    "encode",
    "key_stem",
    "name_of",
    "read_file",
    "span_digest",
]

MAGIC = b"SWC2"
PREFIX = struct.Struct("<4sIQ")  # magic, header length, xxh3-64 of the header
BLOCK = 1 << 20  # each block of a value carries its own xxh3-64, so ranges verify cheaply
MAX_HEADER = 1 << 24  # a longer header length is a flipped bit, not a real header


class Corrupt(Exception):
    """A cache file failed its checks (it is dropped and the value refetched)."""


@dataclass(frozen=True, slots=True)
class Header:
    ns: str
    key: str
    span: str
    size: int
    filled_at: float
    token: str | None
    block: int
    hashes: tuple[int, ...]
    absent: bool
    #: the prefix file's mark when the fill began (``_diskgens.Gens.prefix_mark``)
    prefixes: str
    #: offset of the value's first byte in the file
    base: int


def key_stem(ns: str, key: str) -> str:
    """The first 16 hex digits of every file name of ``key`` (its subdirectory: 2 of them)."""
    return xxhash.xxh3_64_hexdigest(f"{ns}\0{key}".encode())


def span_digest(text: str) -> str:
    """The last 16 hex digits of a file name: those of its span (``span_name``)."""
    return xxhash.xxh3_64_hexdigest(text.encode())


def name_of(ns: str, key: str, span: Span) -> str:
    """The file name of ``(ns, key, span)``."""
    return key_stem(ns, key) + span_digest(span_name(span))


def encode(
    ns: str,
    key: str,
    span: Span,
    data: bytes | memoryview | None,
    filled_at: float,
    token: str | None,
    mark: str = "",
) -> tuple[bytes | memoryview, ...]:
    """The parts of a cache file (written one after another): prefix, header, bytes."""
    view = memoryview(data if data is not None else b"")
    head: dict[str, Any] = {
        "ns": ns,
        "key": key,
        "span": span_name(span),
        "size": len(view),
        "t": filled_at,
        "tok": token,
        "bs": BLOCK,
        "h": [xxhash.xxh3_64_intdigest(view[i : i + BLOCK]) for i in range(0, len(view), BLOCK)],
        "absent": data is None,
        "pt": mark,
    }
    header = json.dumps(head, separators=(",", ":")).encode()
    prefix = PREFIX.pack(MAGIC, len(header), xxhash.xxh3_64_intdigest(header))
    return prefix, header, view


def prefix_length(raw: bytes) -> int:
    """Bytes needed to hold the prefix and header of a file that starts with ``raw``."""
    if len(raw) < PREFIX.size:
        raise Corrupt("truncated header")
    magic, hlen, _ = PREFIX.unpack_from(raw)
    if magic != MAGIC or hlen > MAX_HEADER:
        raise Corrupt("bad magic or header length")
    return PREFIX.size + hlen


def decode_header(raw: bytes | memoryview, file_size: int) -> Header:
    """The checked header of a file of ``file_size`` bytes that starts with ``raw``."""
    base = prefix_length(bytes(raw[: PREFIX.size]))
    if len(raw) < base or base > file_size:
        raise Corrupt("file shorter than its header")
    _, _, digest = PREFIX.unpack_from(raw)
    header = raw[PREFIX.size : base]
    if xxhash.xxh3_64_intdigest(header) != digest:
        raise Corrupt("header fails its checksum")
    try:
        h = json.loads(bytes(header))
        head = Header(
            ns=_typed(h["ns"], str),
            key=_typed(h["key"], str),
            span=_typed(h["span"], str),
            size=_typed(h["size"], int),
            filled_at=float(_typed(h["t"], (int, float))),
            token=h["tok"] if h["tok"] is None else _typed(h["tok"], str),
            block=_typed(h["bs"], int),
            hashes=tuple(_typed(x, int) for x in _typed(h["h"], list)),
            absent=_typed(h["absent"], bool),
            prefixes=_typed(h["pt"], str),
            base=base,
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise Corrupt(f"bad header: {type(e).__name__}: {e}") from e
    if head.block <= 0 or len(head.hashes) != -(-head.size // head.block):
        raise Corrupt("header's block list does not match its size")
    if file_size != base + head.size:
        raise Corrupt("length does not match header")
    return head


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise TypeError(f"{value!r} is a boolean")
    if not isinstance(value, kind):
        raise TypeError(f"{value!r} is not {kind}")
    return value


def verify(body: memoryview, head: Header, first: int, last: int) -> None:
    """Check blocks ``first..last`` of the value, whose bytes start ``body``."""
    block = head.block
    for i in range(first, last + 1):
        part = body[(i - first) * block : (i - first + 1) * block]
        if xxhash.xxh3_64_intdigest(part) != head.hashes[i]:
            raise Corrupt(f"block {i} fails its checksum")


def bounds(size: int, span: Span) -> tuple[int, int]:
    """``[start, stop)`` of ``span`` within a value of ``size`` bytes."""
    if span is WHOLE:
        return 0, size
    if span[0] == "r":
        return min(span[1], size), min(max(span[1], span[2]), size)  # type: ignore[misc]
    if span[0] == "o":
        return min(span[1], size), size
    return max(0, size - span[1]), size


def pread(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` from ``offset`` (fewer only at end of file)."""
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


#: files up to this size are read in one call; larger ones: the header, then the blocks
READ_ALL = 4 << 20
_HEAD_GUESS = 4096  # first read of a larger file (a header for values up to ~200 MiB)
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def read_file(path: str, ns: str, key: str, stored: Span, want: Span) -> tuple[Header, Any] | None:
    """The header and bytes of ``want`` from the file of ``(ns, key, stored)`` at ``path``.

    Returns None when the file holds another entry (a name collision, or a file moved
    under this name); the bytes are None for an absent marker. Raises
    FileNotFoundError when there is no file and :class:`Corrupt` when a check fails.

    Files up to ``READ_ALL``: one open, fstat, pread of the whole file and close (each
    system call hands the GIL round, which under concurrent reads costs more than the
    call); larger files: the header, then only the blocks wanted. The fd pins the inode:
    a concurrent rename or unlink shows the old file whole.
    """
    fd = os.open(path, _O_READ)
    try:
        size_on_disk = os.fstat(fd).st_size
        raw = pread(fd, size_on_disk if size_on_disk <= READ_ALL else _HEAD_GUESS, 0)
        base = prefix_length(raw)
        if len(raw) < base <= size_on_disk:
            raw += pread(fd, base - len(raw), len(raw))
        head = decode_header(raw, size_on_disk)
        if head.ns != ns or head.key != key or head.span != span_name(stored):
            return None
        if head.absent:
            return head, None
        start, stop = bounds(head.size, want if stored is WHOLE else WHOLE)
        if stop <= start:
            return head, b""
        first, last = start // head.block, (stop - 1) // head.block
        lo, hi = first * head.block, min(head.size, (last + 1) * head.block)
        if base + hi <= len(raw):  # the first read got it all
            body: bytes | memoryview = memoryview(raw)[base + lo : base + hi]
        else:
            body = pread(fd, hi - lo, base + lo)
    finally:
        os.close(fd)
    if len(body) != hi - lo:
        raise Corrupt("file shorter than its header says")
    view = memoryview(body)
    verify(view, head, first, last)
    return head, (body if (start, stop) == (lo, hi) else view[start - lo : stop - lo])
