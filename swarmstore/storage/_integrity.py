"""Checksum records: versioned, key-bound xxh3-64 block hashes of an object (or a tombstone).

A record travels with the object it describes (an xattr on a local file, user metadata
on an S3 object) so bytes and checksum are written in one atomic step and read in the
same request. Blocks let a partial read (``byte_range``, sharded arrays) be verified
without fetching the whole object: the read is widened to whole blocks, each block is
checked, then sliced. The block size grows with the object (at most ``MAX_BLOCKS``
blocks) so the record stays under S3's 2 KiB user-metadata limit.

Format 2 (written now)::

    2:d:<counter>:<writer>:<size>:<block>:<base64 of big-endian u64 hashes>:<check>
    2:t:<counter>:<writer>:<check>                       (a tombstone: "deleted")
    2:e:<counter>:<writer>:<size>:<block>:<base64>:<index>:<k>:<m>:<length>:<digest>:<codec>:<check>
                                                         (one erasure-coded fragment)

A fragment's record describes the fragment's own bytes (size, blocks, hashes: verified
like any object) plus :class:`Fragment`: its index among ``k + m``, the code, and the
logical value's length and xxh3-64 ``digest`` (checked after decoding). Records without
the fragment part (every record written before) read as before.

``(counter, writer)`` is the version: a per-key counter (one more than the highest a write
saw on a read quorum of the key's replicas) and the writer's random 63-bit id as the tie
break. No clock is involved. ``check`` is xxh3-128 over the key and every other field, so
a record decoded against another key (a swapped or misplaced file) or with any field
flipped (a version bit, a size, a hash) is corrupt, never trusted.

Format 1 (legacy, read only): ``1:<ns stamp>:<size>:<block>:<base64>``, unbound to its key
and unchecked. It decodes as version ``(0, stamp)``: below every format-2 version, so a
legacy replica never outranks a current one; repair rewrites it as format 2.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, replace

import xxhash

from swarmstore.errors import ChecksumMismatch

__all__ = ["LOWEST", "MAX_BLOCKS", "Fragment", "Record", "Version"]

MAX_BLOCKS = 128
#: ``(counter, writer)``, compared as a tuple
type Version = tuple[int, int]
#: the version of a value without a record (written by plain zarr or a copy tool)
LOWEST: Version = (-1, 0)
_MAX_WRITER = 1 << 63


def _block_size(size: int, min_block: int) -> int:
    if min_block < 1:
        raise ValueError(f"checksum block size must be at least 1 byte, got {min_block}")
    block = min_block
    while size > block * MAX_BLOCKS:
        block *= 2
    return block


def _check(key: str, body: str) -> str:
    return xxhash.xxh3_128_hexdigest(f"{key}\0{body}".encode())


@dataclass(frozen=True)
class Fragment:
    """What makes a record a fragment's: index ``0..k+m-1``, the code ``(k, m, codec)``,
    and the logical value's ``length`` and xxh3-64 ``digest``."""

    index: int
    k: int
    m: int
    length: int
    digest: int
    codec: str

    def encode(self) -> str:
        return f"{self.index}:{self.k}:{self.m}:{self.length}:{self.digest:016x}:{self.codec}"

    @classmethod
    def decode(cls, parts: list[str], text: str) -> Fragment:
        index, k, m, length = (int(p) for p in parts[:4])
        codec = parts[5]
        if not (0 < k and 0 < m and 0 <= index < k + m and length >= 0) or not codec.isidentifier():
            raise ValueError(f"inconsistent fragment record: {text[:60]!r}")
        return cls(index, k, m, length, int(parts[4], 16), codec)


@dataclass(frozen=True)
class Record:
    """The checksum record of one object: size, block size, per-block xxh3-64, version.

    ``deleted=True`` makes it a tombstone (no bytes; ``size``, ``block`` and ``hashes``
    unused). ``legacy`` marks a format-1 record (no key binding, no check hash).
    """

    size: int
    block: int
    hashes: tuple[int, ...]
    counter: int = 0
    writer: int = 0
    deleted: bool = False
    legacy: bool = False
    #: set on an erasure-coded fragment's record (None: a whole value, a tombstone)
    fragment: Fragment | None = None

    @property
    def version(self) -> Version:
        return (self.counter, self.writer)

    @classmethod
    def of(cls, data: bytes | memoryview, min_block: int = 1 << 20, version: Version = (0, 0)):
        """Compute the record of ``data`` (stamped ``version``; writes stamp their own)."""
        size = len(data)
        block = _block_size(size, min_block)
        mv = memoryview(data)
        hashes = tuple(
            xxhash.xxh3_64_intdigest(mv[i : i + block]) for i in range(0, max(size, 1), block)
        )
        return cls(size, block, hashes, version[0], version[1])

    @classmethod
    def tombstone(cls, version: Version) -> Record:
        """The record of a delete at ``version``."""
        return cls(0, 1, (), version[0], version[1], deleted=True)

    def stamped(self, version: Version) -> Record:
        """This record with another version (a format-2 record, whatever this one was)."""
        return replace(self, counter=version[0], writer=version[1], legacy=False)

    # --- encoding ---------------------------------------------------------------------------
    def encode(self, key: str) -> str:
        """The format-2 text of this record, bound to ``key``."""
        if not (0 <= self.counter and 0 <= self.writer < _MAX_WRITER):
            raise ValueError(f"version {self.version} out of range")
        if self.deleted:
            body = f"2:t:{self.counter}:{self.writer}"
        else:
            packed = struct.pack(f">{len(self.hashes)}Q", *self.hashes)
            b64 = base64.b64encode(packed).decode()
            body = f"2:d:{self.counter}:{self.writer}:{self.size}:{self.block}:{b64}"
            if self.fragment is not None:
                body = f"2:e{body[3:]}:{self.fragment.encode()}"
        return f"{body}:{_check(key, body)}"

    @classmethod
    def decode(cls, text: str | bytes, key: str) -> Record:
        """Parse a record stored under ``key``; ``ValueError`` on anything malformed, on a
        check hash that fails (a flipped field) and on a record of another key."""
        if isinstance(text, bytes):
            text = text.decode("ascii")
        if text.startswith("1:"):
            return _decode_legacy(text)
        body, _, check = text.rpartition(":")
        parts = body.split(":")
        if not body or parts[0] != "2" or len(parts) not in (4, 7, 13):
            raise ValueError(f"not a swarmstore checksum record: {text[:40]!r}")
        if check != _check(key, body):
            raise ValueError(f"checksum record fails its check hash or names another key: {key!r}")
        counter, writer = int(parts[2]), int(parts[3])
        if counter < 0 or not 0 <= writer < _MAX_WRITER:
            raise ValueError(f"checksum record version out of range: {text[:60]!r}")
        if parts[1] == "t" and len(parts) == 4:
            return cls.tombstone((counter, writer))
        fragment = None
        if parts[1] == "e" and len(parts) == 13:
            fragment = Fragment.decode(parts[7:], text)
        elif parts[1] != "d" or len(parts) != 7:
            raise ValueError(f"not a swarmstore checksum record: {text[:40]!r}")
        size, block, hashes = _sized(int(parts[4]), int(parts[5]), parts[6], text)
        return cls(size, block, hashes, counter, writer, fragment=fragment)

    # --- comparing and verifying ------------------------------------------------------------
    def same_content(self, other: Record) -> bool:
        """True when both records describe the same bytes (whatever their version)."""
        return (self.size, self.block, self.hashes, self.deleted, self.fragment) == (
            other.size,
            other.block,
            other.hashes,
            other.deleted,
            other.fragment,
        )

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The block-aligned ``[start, end)`` covering the requested bytes."""
        a = (start // self.block) * self.block
        b = min(self.size, -(-end // self.block) * self.block)
        return a, max(a, b)

    def verify(
        self, data: bytes | memoryview, offset: int = 0, end: int | None = None, what: str = ""
    ) -> None:
        """Check ``data``, the bytes ``[offset, end)`` of the object, against this record.

        ``offset`` must be block-aligned and ``end`` block-aligned or the object's size
        (``end`` defaults to the size: a full read). Raises :class:`ChecksumMismatch`
        naming ``what`` when the length or any block is wrong.
        """
        mv = memoryview(data)
        end = self.size if end is None else end
        if offset % self.block or (end % self.block and end != self.size) or end > self.size:
            raise ChecksumMismatch(
                f"{what}: [{offset}, {end}) does not match the record's blocks (size {self.size})"
            )
        if len(mv) != end - offset:
            raise ChecksumMismatch(
                f"{what}: got {len(mv)} bytes, the record says {end - offset} (size {self.size})"
            )
        if self.size == 0:
            if self.hashes != (xxhash.xxh3_64_intdigest(b""),):
                raise ChecksumMismatch(f"{what}: empty value fails its xxh3 checksum")
            return
        first = offset // self.block
        for i, pos in enumerate(range(0, len(mv), self.block)):
            h = xxhash.xxh3_64_intdigest(mv[pos : pos + self.block])
            if h != self.hashes[first + i]:
                raise ChecksumMismatch(
                    f"{what}: block {first + i} (bytes {offset + pos}..) fails its xxh3 checksum"
                )


def _sized(size: int, block: int, b64: str, text: str) -> tuple[int, int, tuple[int, ...]]:
    raw = base64.b64decode(b64, validate=True)
    n = len(raw) // 8
    if size < 0 or block <= 0 or n * 8 != len(raw) or n != max(1, -(-size // block)):
        raise ValueError(f"inconsistent checksum record: {text[:60]!r}")
    return size, block, struct.unpack(f">{n}Q", raw)


def _decode_legacy(text: str) -> Record:
    parts = text.split(":")
    if len(parts) != 5:
        raise ValueError(f"not a swarmstore checksum record: {text[:40]!r}")
    stamp = int(parts[1])
    if not 0 <= stamp < _MAX_WRITER:
        raise ValueError(f"legacy checksum record stamp out of range: {text[:40]!r}")
    size, block, hashes = _sized(int(parts[2]), int(parts[3]), parts[4], text)
    return Record(size, block, hashes, 0, stamp, legacy=True)
