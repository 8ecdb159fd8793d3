"""Manifest pieces: an array's chunk references, split into content-addressed parts.

A snapshot does not list its chunks. For each zarr node it lists *pieces*: sorted runs
of ``key -> (xxh3-128 of the object, size)`` stored at ``pieces/<hash>`` under the
xxh3-128 of their own bytes. A commit rewrites only the pieces holding keys it
changed, and reuses every other piece by reference, so its bytes grow with the chunks
it changed, not with the array. A read loads only the piece whose key range holds the
key it wants.

Piece boundaries are content-defined: a run ends after a key whose 64-bit hash is 0
modulo :data:`TARGET` (once the run has :data:`MIN` keys), or at :data:`MAX` keys. A
boundary depends on the key, not on its position, so inserting or changing keys moves
no boundary outside the pieces that hold them.

Format (all integers little-endian)::

    b"SWPC\\x01"  u32 header length  header (JSON: count, keys, sizes)
    keys     zlib of the sorted, newline-joined keys (relative to the node)
    digests  16 bytes per entry (raw xxh3-128)
    sizes    zlib of one u64 per entry

Decoding checks the magic, every length, the sort order and that every key is a safe
relative key; decompression is bounded, so a hostile piece cannot exhaust memory.
"""

from __future__ import annotations

import bisect
import itertools
import re
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

import swarmstore.checkpoint._json as _json
from swarmstore.errors import ManifestError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = ["MAX", "MIN", "TARGET", "Piece", "PieceRef", "split"]

TARGET, MIN, MAX = 4096, 1024, 16384
MAGIC = b"SWPC\x01"
_MAX_BYTES = 64 << 20
_MAX_KEY = 1024
#: a key segment that is empty, "." or "..", a backslash or NUL anywhere in the blob
_UNSAFE = re.compile(rb"(^|\n)(/|\n|$|\.{1,2}(/|\n|$))|/(/|\.{1,2}(/|\n|$))|/(\n|$)|[\\\x00]")

type Item = tuple[str, bytes, int]  # key, raw 16-byte digest, size


@dataclass(frozen=True)
class PieceRef:
    """What a snapshot records of a piece: hash, byte size, entry count, first key, and the
    bytes of the objects it names."""

    hash: str
    size: int
    count: int
    first: str
    nbytes: int


class Piece:
    """One sorted run of chunk references (immutable once built)."""

    __slots__ = ("_zkeys", "digests", "keys", "sizes")

    def __init__(
        self, keys: list[str], digests: bytes, sizes: np.ndarray, zkeys: bytes | None = None
    ) -> None:
        self.keys, self.digests, self.sizes = keys, digests, sizes
        #: the compressed keys, once encoded (shared by pieces patched from this one)
        self._zkeys = zkeys

    def patched(self, edits: Mapping[str, tuple[bytes, int]]) -> Piece | None:
        """This piece with the entries of keys it holds replaced (same keys, so the same
        content-defined boundaries); None when an edit names a key it does not hold."""
        digests, sizes = bytearray(self.digests), self.sizes.copy()
        for key, (digest, size) in edits.items():
            i = bisect.bisect_left(self.keys, key)
            if i == len(self.keys) or self.keys[i] != key:
                return None
            digests[16 * i : 16 * i + 16] = digest
            sizes[i] = size
        return Piece(self.keys, bytes(digests), sizes, self._compressed_keys())

    def _compressed_keys(self) -> bytes:
        if self._zkeys is None:
            self._zkeys = zlib.compress("\n".join(self.keys).encode(), 6)
        return self._zkeys

    @classmethod
    def of(cls, items: Sequence[Item]) -> Piece:
        """A piece of ``items``, which must be sorted by key without duplicates."""
        return cls(
            [k for k, _, _ in items],
            b"".join(d for _, d, _ in items),
            np.fromiter((s for _, _, s in items), dtype="<u8", count=len(items)),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, key: str) -> tuple[str, int] | None:
        """``(hash hex, size)`` of ``key``, or None when the piece does not hold it."""
        i = bisect.bisect_left(self.keys, key)
        if i == len(self.keys) or self.keys[i] != key:
            return None
        return self.digests[16 * i : 16 * i + 16].hex(), int(self.sizes[i])

    def items(self) -> Iterator[Item]:
        """``(key, raw digest, size)`` in key order."""
        for i, key in enumerate(self.keys):
            yield key, self.digests[16 * i : 16 * i + 16], int(self.sizes[i])

    def hashes(self) -> Iterator[str]:
        """Every object hash the piece names (hex)."""
        view = memoryview(self.digests)
        return (view[16 * i : 16 * i + 16].hex() for i in range(len(self.keys)))

    def encode(self) -> bytes:
        """The piece's bytes (deterministic: equal pieces have equal bytes and hash)."""
        keys = self._compressed_keys()
        sizes = zlib.compress(self.sizes.astype("<u8").tobytes(), 6)
        header = _json.dumps({"count": len(self.keys), "keys": len(keys), "sizes": len(sizes)})
        return b"".join((MAGIC, struct.pack("<I", len(header)), header, keys, self.digests, sizes))

    def ref(self, data: bytes) -> PieceRef:
        """The reference a snapshot stores for this piece encoded as ``data``."""
        return PieceRef(
            xxhash.xxh3_128_hexdigest(data),
            len(data),
            len(self.keys),
            self.keys[0],
            int(self.sizes.sum()),
        )

    @classmethod
    def decode(cls, data: bytes, *, where: str) -> Piece:
        """Parse and validate; raise :class:`ManifestError` naming ``where`` if it is bad."""
        if len(data) > _MAX_BYTES or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise ManifestError(f"{where} is not a manifest piece")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        head = _json.loads(data[start : start + hlen], where=where, max_bytes=4096)
        if not (isinstance(head, dict) and set(head) == {"count", "keys", "sizes"}):
            raise ManifestError(f"{where} has a malformed header")
        n, klen, slen = (head[f] for f in ("count", "keys", "sizes"))
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in head.values()
        ):
            raise ManifestError(f"{where} has a malformed header")
        body = start + hlen
        if not 0 < n <= 4 * MAX or len(data) != body + klen + 16 * n + slen:
            raise ManifestError(f"{where} is truncated or has trailing bytes")
        blob = _inflate(data[body : body + klen], n * (_MAX_KEY + 1), where)
        keys = _keys(blob, n, where)
        digests = data[body + klen : body + klen + 16 * n]
        raw = _inflate(data[body + klen + 16 * n :], 8 * n, where)
        if len(raw) != 8 * n:
            raise ManifestError(f"{where} has {len(raw) // 8} sizes for {n} keys")
        return cls(keys, bytes(digests), np.frombuffer(raw, dtype="<u8"), data[body : body + klen])


def _inflate(data: bytes, limit: int, where: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as e:
        raise ManifestError(f"{where} is corrupt: {e}") from e
    if inflater.unconsumed_tail or not inflater.eof:
        raise ManifestError(f"{where} decompresses past its bound or is truncated")
    return out


#: Substrings without which no key of a blob can be unsafe (a fast test before _UNSAFE).
_SUSPECT = (b"/.", b"\n.", b"//", b"\n\n", b"\n/", b"/\n", b"\\", b"\x00")


def _maybe_unsafe(blob: bytes) -> bool:
    """False when no key in ``blob`` can match :data:`_UNSAFE` (each test is a C scan)."""
    return (
        not blob
        or blob[:1] in (b"/", b".", b"\n")
        or blob[-1:] in (b"/", b"\n")
        or any(s in blob for s in _SUSPECT)
    )


def _keys(blob: bytes, n: int, where: str) -> list[str]:
    if _maybe_unsafe(blob) and _UNSAFE.search(blob):
        raise ManifestError(f"{where} names an unsafe key (empty, '.', '..', '\\\\' or NUL)")
    try:
        keys = blob.decode().split("\n")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{where} has keys that are not UTF-8") from e
    if len(keys) != n or any(len(k) > _MAX_KEY for k in keys):
        raise ManifestError(f"{where} holds {len(keys)} keys, not {n}, or an overlong one")
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ManifestError(f"{where} has keys out of order or repeated")
    return keys


def _boundary(key: str) -> bool:
    return xxhash.xxh3_64_intdigest(key.encode()) % TARGET == 0


def split(items: Iterable[Item]) -> list[Piece]:
    """Pieces of ``items`` (sorted by key, no duplicates), cut at content-defined boundaries."""
    pieces: list[Piece] = []
    run: list[Item] = []
    hash64 = xxhash.xxh3_64_intdigest
    for item in items:
        run.append(item)
        n = len(run)
        if n >= MAX or (n >= MIN and hash64(item[0].encode()) % TARGET == 0):
            pieces.append(Piece.of(run))
            run = []
    if run:
        pieces.append(Piece.of(run))
    return pieces
