"""Erasure coding: which keys are coded (:class:`Coding`, :class:`CodingPolicy`) and the
Reed-Solomon codec that splits a value into ``k`` data and ``m`` parity fragments.

The codec is PyECLib (``pip install 'swarmstore[erasure]'``) with Intel ISA-L's Cauchy
Reed-Solomon (``isa_l_rs_cauchy``, bundled in PyECLib's wheels; maximum distance separable
for every ``k, m``), falling back to liberasurecode's own ``liberasurecode_rs_vand`` where
ISA-L is missing. Measured here (``benchmarks/bench_erasure.py``, docs/erasure.md) it
encodes at several GB/s, 5-10x zfec, once glibc keeps heap pages for its fresh buffers
(:mod:`~swarmstore.storage._heap`; without that, at 1 MiB values, about 0.8 GB/s). The
codec's name is stored in every fragment's record, so fragments are always decoded by the
code that wrote them.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore import config
from swarmstore.errors import ConfigError
from swarmstore.storage._heap import keep_pad
from swarmstore.storage._integrity import Fragment, Record

if TYPE_CHECKING:
    from pyeclib.ec_iface import ECDriver

__all__ = [
    "METADATA_NAMES",
    "Codec",
    "Coding",
    "CodingPolicy",
    "codec",
    "fragments_of",
    "refuse_fragment",
]

#: keys whose last component is one of these stay replicated (zarr v3 and v2 metadata)
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_PREFERRED = ("isa_l_rs_cauchy", "liberasurecode_rs_vand")
_MAX_FRAGMENTS = 32  # liberasurecode's k + m limit


@dataclass(frozen=True)
class Coding:
    """Reed-Solomon with ``k`` data and ``m`` parity fragments on ``k + m`` distinct nodes.

    ``write_quorum``: fragments a write needs acknowledged (default ``k + m``, all of
    them, so an acknowledged write survives ``m`` later losses; at ``w < k + m`` it
    survives ``w - k``, and the missed fragments get hints). At least ``k + 1`` and at
    least ``m + 1``, so the ``k`` fragments a read fetches always include a node of
    every write quorum (``k + (w) > k + m``).
    """

    k: int
    m: int
    write_quorum: int | None = None

    def __post_init__(self) -> None:
        for name in ("k", "m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"erasure coding needs {name} >= 1, got {v!r}")
        if self.k + self.m > _MAX_FRAGMENTS:
            raise ConfigError(f"erasure coding allows k + m <= {_MAX_FRAGMENTS}, got {self}")
        w = self.write_quorum
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, int) or not self.lowest_w <= w <= self.n
        ):
            raise ConfigError(f"{self}: write_quorum must be {self.lowest_w}..{self.n}, got {w!r}")

    @property
    def n(self) -> int:
        """Fragments (and nodes) per key."""
        return self.k + self.m

    @property
    def lowest_w(self) -> int:
        return max(self.k + 1, self.m + 1)

    @property
    def w(self) -> int:
        return self.n if self.write_quorum is None else self.write_quorum

    @property
    def rq(self) -> int:
        """Nodes whose versions a read must hear: every write quorum meets them."""
        return self.n - self.w + 1

    def __str__(self) -> str:
        return f"RS({self.k},{self.m})"

    @classmethod
    def parse(cls, spec: Any, where: str = "coding") -> Coding:
        """A :class:`Coding` from itself, ``(k, m)``, ``(k, m, w)`` or ``"k+m"``."""
        if isinstance(spec, Coding):
            return spec
        if isinstance(spec, str):
            k, plus, m = spec.partition("+")
            if plus and k.strip().isdigit() and m.strip().isdigit():
                return cls(int(k), int(m))
        elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
            return cls(*spec)
        raise ConfigError(f"{where}: expected 'k+m', (k, m) or Coding(k, m), got {spec!r}")


@dataclass(frozen=True)
class CodingPolicy:
    """Which keys are coded, by key prefix (the longest matching prefix wins; ``""``
    matches every key). Metadata keys (``zarr.json`` and zarr v2's) stay replicated, so
    any node still opens the hierarchy and plain zarr lists it."""

    rules: tuple[tuple[str, Coding], ...] = ()

    @classmethod
    def of(cls, arg: Any) -> CodingPolicy:
        """From a constructor argument; None reads ``storage.coding`` from config."""
        if isinstance(arg, CodingPolicy):
            return arg
        if arg is None:
            arg = config.value("storage.coding")
            if arg is None:
                return cls()
        if not isinstance(arg, Mapping):
            arg = {"": arg}
        rules = []
        for prefix, spec in arg.items():
            if not isinstance(prefix, str):
                raise ConfigError(f"coding prefixes are str, got {prefix!r}")
            rules.append((prefix, Coding.parse(spec, f"coding[{prefix!r}]")))
        rules.sort(key=lambda r: -len(r[0]))
        return cls(tuple(rules))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def for_key(self, key: str) -> Coding | None:
        """The coding of ``key``, or None: replicated."""
        if not self.rules or posixpath.basename(key) in METADATA_NAMES:
            return None
        for prefix, coding in self.rules:
            if key.startswith(prefix):
                return coding
        return None

    def as_arg(self) -> dict[str, tuple[int, int, int | None]] | None:
        if not self.rules:
            return None
        return {p: (c.k, c.m, c.write_quorum) for p, c in self.rules}


class Codec:
    """One ``(k, m)`` Reed-Solomon code through PyECLib: encode, decode, rebuild."""

    def __init__(self, k: int, m: int, name: str) -> None:
        self.k, self.m, self.name = k, m, name
        self.driver: ECDriver = _driver(k, m, name)

    def encode(self, data: bytes) -> list[bytes]:
        """``k + m`` fragments of ``data`` (index ``i`` at position ``i``)."""
        return list(self.driver.encode(bytes(data)))

    def decode(self, fragments: Mapping[int, bytes], length: int, digest: int) -> bytes:
        """The value (``length`` bytes, xxh3-64 ``digest``) from at least ``k`` fragments
        (their indexes as keys). Both codes are systematic: with the ``k`` data fragments
        at hand the value is their payloads joined (no decode); checked by ``digest``,
        with the decoder as the fallback."""
        if length and all(i in fragments for i in range(self.k)):
            payload = -(-length // self.k)
            joined = b"".join(memoryview(fragments[i])[-payload:] for i in range(self.k))
            if xxhash.xxh3_64_intdigest(memoryview(joined)[:length]) == digest:
                return joined if len(joined) == length else joined[:length]
        chosen = [fragments[i] for i in sorted(fragments)[: self.k]]
        return bytes(self.driver.decode(chosen))

    def rebuild(self, fragments: Mapping[int, bytes], missing: list[int]) -> dict[int, bytes]:
        """The fragments ``missing`` from at least ``k`` others."""
        chosen = [fragments[i] for i in sorted(fragments)[: self.k]]
        return {i: bytes(self.driver.reconstruct(chosen, [i])[0]) for i in missing}


def _pyeclib() -> Any:
    try:
        from pyeclib import ec_iface
    except ImportError as e:
        raise ImportError(
            "erasure-coded keys need PyECLib: pip install 'swarmstore[erasure]'"
        ) from e
    return ec_iface


@functools.lru_cache(maxsize=64)
def _driver(k: int, m: int, name: str) -> ECDriver:
    keep_pad()  # fresh fragment buffers every call: keep heap pages for them (_heap)
    return _pyeclib().ECDriver(k=k, m=m, ec_type=name)


@functools.lru_cache(maxsize=1)
def default_codec_name() -> str:
    """The fastest code available here (ISA-L's Cauchy RS, else liberasurecode's)."""
    valid = set(_pyeclib().VALID_EC_TYPES)
    for name in _PREFERRED:
        if name in valid:
            return name
    raise ImportError(f"PyECLib offers none of {_PREFERRED} here (it has {sorted(valid)})")


def codec(k: int, m: int, name: str | None = None) -> Codec:
    """The codec of ``RS(k, m)``: ``name`` (from a record), or the default for new writes."""
    return Codec(k, m, name or default_codec_name())


def fragments_of(
    k: int, m: int, data: bytes, min_block: int, name: str | None = None
) -> list[tuple[bytes, Record]]:
    """The ``k + m`` fragments of ``data``, each with its (unstamped) record."""
    rs = codec(k, m, name)
    digest = xxhash.xxh3_64_intdigest(data)
    out = []
    for i, f in enumerate(rs.encode(data)):
        frag = Fragment(i, k, m, len(data), digest, rs.name)
        out.append((f, replace(Record.of(f, min_block), fragment=frag)))
    return out


def refuse_fragment(key: str, got: Any) -> None:
    """A replicated read, repair, scrub or move that found a fragment: the key was written
    coded, and this store's policy does not code it. Never return a fragment as the value,
    nor copy one over the other fragments as if it were a replica."""
    record = getattr(got, "record", None)
    if record is not None and record.fragment is not None:
        f = record.fragment
        raise ConfigError(
            f"{key!r} is stored erasure-coded (RS({f.k},{f.m})) but this store replicates it: "
            f"open the store with coding={{{key.rpartition('/')[0] + '/'!r}: ({f.k}, {f.m})}} "
            "or convert the prefix back (store.convert)"
        )
