"""ManifestStore: a zarr store whose keys resolve through a manifest to stored objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import default_buffer_prototype

from swarmstore.checkpoint._manifest import (
    Entry,
    check_key,
    content_hash,
    is_metadata_key,
    object_key,
)
from swarmstore.errors import CheckpointNotFoundError, ChecksumMismatch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterable, Mapping

    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["ManifestStore", "control_store", "forget_listings"]

_BYTE_REQUESTS = (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix) :]
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


def control_store(store: Store) -> Store:
    """``store`` without the caches above it: where commits and listings must go.

    A :class:`~swarmstore.cache.TieredStore` may answer from RAM or disk (absent keys
    included) what another process has changed since; manifests, markers and locks are
    read and written on the store beneath it. Objects, immutable by construction, are
    still read through the cache.
    """
    from swarmstore.cache import TieredStore

    while isinstance(store, TieredStore):
        store = store.backing
    return store


def forget_listings(store: Store) -> bool:
    """Drop fsspec's cached directory listings under ``store``; True if it had any cache.

    s3fs answers ``_info`` (and so the size probe in ``_cat_file``) from cached listings:
    once a prefix was listed, a key another process created since reads as missing.
    Checkpoints are shared between processes, so each operation starts from fresh
    listings, and a missing object is retried once after forgetting them.
    """
    from zarr.storage import WrapperStore

    while isinstance(store, WrapperStore):
        store = store._store
    fs = getattr(store, "fs", None)
    if fs is None or not hasattr(fs, "invalidate_cache"):
        return False
    fs.invalidate_cache()
    return True


class ManifestStore(Store):
    """A zarr v3 store over a manifest: logical keys map to content-addressed objects.

    Reads resolve ``key`` through ``entries`` to the inline text of a metadata document or
    to the object ``objects/<hash>`` in ``backing``; whole-object reads are checked against
    the hash (``verify``). Writes hash the encoded bytes with xxh3-128 and store an object
    only when no known object has that hash, so unchanged chunks are never written twice.
    A restored checkpoint is this store opened read-only: a lazy view that writes nothing.

    Parameters
    ----------
    backing : zarr.abc.store.Store
        The checkpoint store holding ``objects/``.
    entries : mapping, optional
        Logical key → inline text or ``(hash, size)``; copied.
    read_only : bool
        Refuse writes (restores are read-only).
    verify : bool
        Check each whole-object read against its hash (xxh3 runs at many GB/s).
        Ranged reads (sharded partial reads) cannot be checked and are passed through.
    known : collection of str
        Hashes already present in ``backing`` (the parent checkpoint's): not rewritten.

    Notes
    -----
    Safe for concurrent use from one event loop (zarr writes chunks concurrently). A
    pickled copy carries its own entries: writes to the copy are not seen by the
    original, as with zarr's ``MemoryStore``. Keys must be safe relative keys
    (:func:`check_key`); anything else raises :class:`InvalidKeyError`.

    Examples
    --------
    >>> import zarr
    >>> store = ManifestStore(zarr.storage.MemoryStore())
    >>> arr = zarr.create_array(store, shape=(4,), chunks=(2,), dtype="i4")
    >>> arr[:] = [1, 2, 3, 4]
    >>> sorted(store.entries)
    ['c/0', 'c/1', 'zarr.json']
    >>> zarr.open_array(store.with_read_only(True), mode="r")[:].tolist()
    [1, 2, 3, 4]
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True

    def __init__(
        self,
        backing: Store,
        entries: Mapping[str, Entry] | None = None,
        *,
        read_only: bool = False,
        verify: bool = True,
        known: Collection[str] = (),
    ) -> None:
        super().__init__(read_only=read_only)
        self.backing = backing
        self.verify = verify
        self.known = known
        self._entries: dict[str, Entry] = dict(entries or {})
        self._written: set[str] = set()
        #: Objects and bytes this store wrote, and objects it found already present.
        self.written_objects = 0
        self.written_bytes = 0
        self.reused_objects = 0

    @property
    def entries(self) -> dict[str, Entry]:
        """The live key → entry map (what a manifest of this store would hold)."""
        return self._entries

    def with_read_only(self, read_only: bool = False) -> Self:
        # docstring inherited
        return type(self)(
            self.backing, self._entries, read_only=read_only, verify=self.verify, known=self.known
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ManifestStore)
            and self.backing == other.backing
            and self._entries == other._entries
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "w"
        return f"ManifestStore({self.backing!r}, {len(self._entries)} keys, mode={mode!r})"

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        if byte_range is not None and not isinstance(byte_range, _BYTE_REQUESTS):
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        prototype = prototype or default_buffer_prototype()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if isinstance(entry, str):
            return prototype.buffer.from_bytes(_slice(entry.encode(), byte_range))
        digest, size = entry
        if size == 0:
            return prototype.buffer.from_bytes(b"")
        value = await self.backing.get(object_key(digest), prototype, byte_range)
        if value is None and forget_listings(self.backing):
            value = await self.backing.get(object_key(digest), prototype, byte_range)
        if value is None:
            raise CheckpointNotFoundError(
                f"object {digest} holding {key!r} is missing from {self.backing!r}: the "
                "checkpoint is damaged (restore another step, or repair the store)"
            )
        if byte_range is None and self.verify and content_hash(value.as_buffer_like()) != digest:
            raise ChecksumMismatch(
                f"object {digest} holding {key!r} in {self.backing!r} fails its xxh3 check"
            )
        return value

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def getsize(self, key: str) -> int:
        # docstring inherited
        entry = self._entries.get(key)
        if entry is None:
            raise FileNotFoundError(key)
        return len(entry.encode()) if isinstance(entry, str) else entry[1]

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return key in self._entries

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        check_key(key)
        if is_metadata_key(key):
            try:
                self._entries[key] = value.to_bytes().decode()
                return
            except UnicodeDecodeError:
                pass  # not text: store it as an object like any other value
        self._entries[key] = await self._put_object(value)

    async def _put_object(self, value: Buffer) -> tuple[str, int]:
        digest = content_hash(value.as_buffer_like())
        size = len(value)
        if size and digest not in self.known and digest not in self._written:
            self._written.add(digest)  # concurrent writers of the same bytes write once
            try:
                await self.backing.set(object_key(digest), value)
            except BaseException:
                self._written.discard(digest)
                raise
            self.written_objects += 1
            self.written_bytes += size
        elif size:
            self.reused_objects += 1
        return (digest, size)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited: atomic within one event loop (no await before the claim)
        self._check_writable()
        if key not in self._entries:
            self._entries[key] = ""  # claim the key, then fill it in
            try:
                await self.set(key, value)
            except BaseException:
                self._entries.pop(key, None)
                raise

    async def delete(self, key: str) -> None:
        # docstring inherited: the object stays until garbage collection finds it unnamed
        self._check_writable()
        self._entries.pop(key, None)

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in list(self._entries):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in list(self._entries):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        prefix = prefix.rstrip("/")
        start = f"{prefix}/" if prefix else ""
        seen: set[str] = set()
        for key in list(self._entries):
            if key.startswith(start):
                child = key[len(start) :].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield child

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_written"] = set()
        return state
