"""Checksum records: xxh3-64 over fixed-size blocks of an object.

A record travels with the object it describes (an xattr on a local file, user metadata
on an S3 object) so bytes and checksum are written in one atomic step and read in the
same request. Blocks let a partial read (``byte_range``, sharded arrays) be verified
without fetching the whole object: the read is widened to whole blocks, each block is
checked, then sliced. The block size grows with the object (at most ``MAX_BLOCKS``
blocks) so the record stays under S3's 2 KiB user-metadata limit.

Encoded form: ``"1:<version>:<size>:<block>:<base64 of big-endian u64 hashes>"``;
``version`` is a nanosecond write stamp used to pick the newest of diverged replicas.
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass

import xxhash

from swarmstore.errors import ChecksumMismatch

__all__ = ["MAX_BLOCKS", "Record"]

MAX_BLOCKS = 128
_FORMAT = "1"


def _block_size(size: int, min_block: int) -> int:
    block = min_block
    while size > block * MAX_BLOCKS:
        block *= 2
    return block


@dataclass(frozen=True)
class Record:
    """The checksum record of one object: its size, block size and per-block xxh3-64."""

    size: int
    block: int
    hashes: tuple[int, ...]
    version: int = 0

    @classmethod
    def of(cls, data: bytes | memoryview, min_block: int = 1 << 20, version: int | None = None):
        """Compute the record of ``data``."""
        size = len(data)
        block = _block_size(size, min_block)
        mv = memoryview(data)
        hashes = tuple(
            xxhash.xxh3_64_intdigest(mv[i : i + block]) for i in range(0, max(size, 1), block)
        )
        return cls(size, block, hashes, time.time_ns() if version is None else version)

    def encode(self) -> str:
        packed = struct.pack(f">{len(self.hashes)}Q", *self.hashes)
        b64 = base64.b64encode(packed).decode()
        return f"{_FORMAT}:{self.version}:{self.size}:{self.block}:{b64}"

    @classmethod
    def decode(cls, text: str | bytes) -> Record:
        """Parse an encoded record; raises ``ValueError`` on anything malformed."""
        if isinstance(text, bytes):
            text = text.decode("ascii")
        parts = text.split(":")
        if len(parts) != 5 or parts[0] != _FORMAT:
            raise ValueError(f"not a swarmstore checksum record: {text[:40]!r}")
        version, size, block = int(parts[1]), int(parts[2]), int(parts[3])
        raw = base64.b64decode(parts[4], validate=True)
        n = len(raw) // 8
        if size < 0 or block <= 0 or n * 8 != len(raw) or n != max(1, -(-size // block)):
            raise ValueError(f"inconsistent checksum record: {text[:60]!r}")
        return cls(size, block, struct.unpack(f">{n}Q", raw), version)

    def same_content(self, other: Record) -> bool:
        """True when both records describe the same bytes (whatever their version)."""
        return (self.size, self.block, self.hashes) == (other.size, other.block, other.hashes)

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
            raise ValueError(f"[{offset}, {end}) is not a block-aligned span of {self.size}")
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
