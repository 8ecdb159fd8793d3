"""Summary: a Bloom filter of the keys one worker's cache holds, sent with its heartbeats.

A reader asks a peer for a key only when the owner ring names that peer or the peer's
summary says it may hold the key. A Bloom filter has no false negatives for the keys it
was built from and a false-positive rate set by its size: at 8 KiB (65536 bits, 4
hashes) about 2% for 8000 keys. A false positive, or a key evicted since the summary was
built, costs one peer attempt that answers "miss"; it never changes a result.

Pure Python and numpy; the size is fixed by config (``swarmstore.cache.peer-summary-bits``),
so a heartbeat never grows with the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xxhash

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["HASHES", "Summary", "key_hash", "positions"]

#: hash functions per key (double hashing from one xxh3-128)
HASHES = 4


def key_hash(ns: str, key: str) -> int:
    """The 128-bit hash a summary files ``(ns, key)`` under."""
    return xxhash.xxh3_128_intdigest(f"{ns}\0{key}".encode())


class Summary:
    """A Bloom filter of ``(ns, key)`` pairs, ``bits`` long (a multiple of 8).

    Examples
    --------
    >>> s = Summary.of([("ns", "a/c/0"), ("ns", "a/c/1")], bits=1024)
    >>> ("ns", "a/c/0") in s, ("ns", "a/c/9") in s, len(s.to_bytes())
    (True, False, 128)
    """

    __slots__ = ("bits", "count", "data")

    def __init__(self, data: np.ndarray, count: int = 0) -> None:
        if data.dtype != np.uint8 or data.ndim != 1 or not len(data):
            raise ValueError("a summary is a non-empty 1-d uint8 array")
        self.data = data
        self.bits = len(data) * 8
        self.count = count

    def __repr__(self) -> str:
        return f"Summary({self.count} keys, {self.bits} bits)"

    @classmethod
    def of(cls, hashes: Iterable[tuple[str, str] | int], bits: int) -> Summary:
        """The summary of these keys (pairs, or their :func:`key_hash`)."""
        nbytes = max(1, bits // 8)
        data = np.zeros(nbytes, dtype=np.uint8)
        hs = [h if isinstance(h, int) else key_hash(*h) for h in hashes]
        if hs:
            idx = _indices(hs, nbytes * 8)
            np.bitwise_or.at(data, idx >> 3, (1 << (idx & 7)).astype(np.uint8))
        return cls(data, len(hs))

    def __contains__(self, item: tuple[str, str] | int) -> bool:
        h = item if isinstance(item, int) else key_hash(*item)
        return self.has(positions(h, self.bits))

    def has(self, pos: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether every bit at ``pos`` (:func:`positions` for this size) is set."""
        return bool(np.all(self.data[pos[0]] & pos[1]))

    def to_bytes(self) -> bytes:
        return self.data.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes, count: int = 0) -> Summary:
        """A summary sent by a peer; ``ValueError`` when it is not one."""
        if not isinstance(raw, (bytes, bytearray, memoryview)) or not len(raw):
            raise ValueError(f"not a peer summary: {type(raw).__name__}")
        return cls(np.frombuffer(bytes(raw), dtype=np.uint8), count)


def positions(h: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The bytes and bit masks a key of hash ``h`` sets in a summary of ``bits`` bits
    (computed once per read, then checked against every worker's summary)."""
    idx = _indices([h], bits)
    return idx >> 3, (1 << (idx & 7)).astype(np.uint8)


def _indices(hashes: list[int], bits: int) -> np.ndarray:
    """Bit positions of each hash: ``h1 + i * h2 mod bits`` for ``i < HASHES``, flattened."""
    lo = np.array([h & 0xFFFFFFFFFFFFFFFF for h in hashes], dtype=np.uint64)
    hi = np.array([(h >> 64) | 1 for h in hashes], dtype=np.uint64)
    steps = np.arange(HASHES, dtype=np.uint64)
    with np.errstate(over="ignore"):
        pos = lo[:, None] + hi[:, None] * steps[None, :]
    return (pos % np.uint64(bits)).astype(np.int64).ravel()
