"""Reading content-addressed objects: every byte checked against its hash, on any store.

:class:`ObjectReader` is the read half of a :class:`~swarmstore.checkpoint._store.ManifestStore`:
given an object's xxh3-128 and the logical key it holds, it fetches ``objects/<hash>``
in one request (:func:`~swarmstore.checkpoint._caps.whole_request`), checks it, and
slices what zarr asked for. A ranged read (a shard's inner chunk) cannot be checked on
its own, so with ``verify`` the whole object is fetched once, checked, and kept
(:data:`VERIFIED_BYTES`, least recently used first out) for the ranges that follow;
concurrent readers of one object share one fetch.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from swarmstore.checkpoint._caps import forget_listings, whole_request
from swarmstore.checkpoint._docs import small_inline
from swarmstore.checkpoint._manifest import content_hash, object_key
from swarmstore.errors import CheckpointNotFoundError, ChecksumMismatch

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest, Store
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["BYTE_REQUESTS", "VERIFIED_BYTES", "ObjectReader", "slice_bytes"]

BYTE_REQUESTS = (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)
#: Bytes of whole, verified objects kept for the ranged reads that follow (shards).
VERIFIED_BYTES = 64 << 20


def slice_bytes(data: bytes, byte_range: ByteRequest | None) -> bytes:
    """``data`` cut to ``byte_range`` as zarr's stores cut it."""
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix) :]
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


class ObjectReader:
    """Fetches and checks the objects of one checkpoint store (see the module docstring)."""

    def __init__(self, backing: Store, verify: bool) -> None:
        self.backing, self.verify = backing, verify
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._verified_bytes = 0
        self._fetching: dict[str, asyncio.Future[bytes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a pickled copy (a Dask task's) starts with nothing kept
        return {"backing": self.backing, "verify": self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["backing"], state["verify"])  # type: ignore[misc]

    def _missing(self, digest: str, key: str) -> CheckpointNotFoundError:
        return CheckpointNotFoundError(
            f"object {digest} holding {key!r} is missing from {self.backing!r}: the "
            "checkpoint is damaged (restore another step, or repair the store)"
        )

    def _check(self, data: Any, digest: str, key: str) -> None:
        if content_hash(data) != digest:
            raise ChecksumMismatch(
                f"object {digest} holding {key!r} in {self.backing!r} fails its xxh3 check"
            )

    async def _fetch(self, digest: str, prototype: BufferPrototype, byte_range: Any) -> Any:
        name = object_key(digest)
        value = await self.backing.get(name, prototype, byte_range)
        if value is None and forget_listings(self.backing):
            value = await self.backing.get(name, prototype, byte_range)  # listed stale
        return value

    async def read(
        self,
        digest: str,
        key: str,
        prototype: BufferPrototype,
        byte_range: ByteRequest | None,
        size: int | None = None,
    ) -> Buffer:
        """The object ``digest`` (holding ``key``, ``size`` bytes when known), cut to
        ``byte_range``, checked."""
        if byte_range is None and size is not None and small_inline(self.backing, size):
            return self.read_sync(digest, key, prototype, None)  # a small local file
        if byte_range is not None and self.verify:
            data = await self._whole(digest, key)
            return prototype.buffer.from_bytes(slice_bytes(data, byte_range))
        value = await self._fetch(digest, prototype, byte_range or whole_request(self.backing))
        if value is None:
            raise self._missing(digest, key)
        if byte_range is None and self.verify:
            self._check(value.as_buffer_like(), digest, key)
        return value

    async def _whole(self, digest: str, key: str) -> bytes:
        """The whole object, verified, fetched once for concurrent ranged reads of it."""
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return self._verified[digest]
        if digest in self._fetching:
            return await asyncio.shield(self._fetching[digest])
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._fetching[digest] = future
        try:
            proto = default_buffer_prototype()
            buf = await self._fetch(digest, proto, whole_request(self.backing))
            if buf is None:
                raise self._missing(digest, key)
            data = buf.to_bytes()
            self._check(data, digest, key)
            self._remember(digest, data)
            future.set_result(data)
            return data
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: concurrent readers re-raise it themselves
            raise
        finally:
            del self._fetching[digest]

    def _remember(self, digest: str, data: bytes) -> None:
        self._verified[digest] = data
        self._verified_bytes += len(data)
        while self._verified_bytes > VERIFIED_BYTES and len(self._verified) > 1:
            self._verified_bytes -= len(self._verified.popitem(last=False)[1])

    def read_sync(
        self, digest: str, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer:
        """:meth:`read` through the backing store's sync surface (zarr's sync reads)."""
        held = self._verified.get(digest) if byte_range is not None and self.verify else None
        if held is not None:  # kept by an async read (the sync side only reads the cache)
            return prototype.buffer.from_bytes(slice_bytes(held, byte_range))
        whole = byte_range is None or self.verify
        value = self.backing.get_sync(  # type: ignore[attr-defined]
            object_key(digest),
            prototype=prototype,
            byte_range=whole_request(self.backing) if whole else byte_range,
        )
        if value is None:
            raise self._missing(digest, key)
        if not self.verify:
            return value
        self._check(value.as_buffer_like(), digest, key)
        if byte_range is None:
            return value
        return prototype.buffer.from_bytes(slice_bytes(value.to_bytes(), byte_range))
