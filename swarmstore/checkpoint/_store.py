"""ManifestStore: a zarr store over a snapshot, and the writable session store on top of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from zarr.abc.store import Store, _store_supports_sync_io
from zarr.core.buffer import default_buffer_prototype

from swarmstore._together import together
from swarmstore.checkpoint._listing import keys_under
from swarmstore.checkpoint._manifest import Entry, check_key
from swarmstore.checkpoint._objects import ObjectWriter, meta_text
from swarmstore.checkpoint._reads import BYTE_REQUESTS, ObjectReader, slice_bytes
from swarmstore.checkpoint._tree import Loader, Tree

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterable, Mapping

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["ManifestStore"]


class ManifestStore(Store):
    """A zarr v3 store over a snapshot: logical keys resolve to content-addressed objects.

    Reads resolve ``key`` through the session's changes, then the base snapshot's tree
    (``_tree``: inline metadata text, or the one manifest piece holding the key), to an
    object ``objects/<hash>`` in ``backing``. With ``verify``, every read is checked
    against the object's xxh3-128, whatever the store: a ranged read (a shard's inner
    chunk) reads the whole object once, checks it, and keeps it briefly for the ranges
    that follow. Writes hash the encoded bytes and store an object only when neither
    ``known`` nor this session has one with that hash: only the chunks zarr writes are
    ever encoded and hashed. A restore is this store opened read-only.

    Parameters
    ----------
    backing : zarr.abc.store.Store
        The checkpoint store holding ``objects/`` and ``pieces/``.
    entries : mapping, optional
        A flat key → inline text or ``(hash, size)`` map to start from (schema 1).
    base : Tree, optional
        The snapshot to start from (instead of ``entries``).
    read_only : bool
        Refuse writes (restores are read-only).
    verify : bool
        Check each object read against its hash (xxh3 runs at many GB/s).
    known : collection of str
        Hashes whose objects are known to be present in ``backing``: not rewritten.

    Notes
    -----
    Safe for concurrent use from one event loop (zarr writes chunks concurrently). A
    pickled copy carries its own changes: writes to the copy are not seen by the
    original (a Dask task returns them, see ``Session``). Views made by
    ``with_read_only`` share the changes, as zarr's ``MemoryStore`` views share data.
    The sync methods work when ``backing`` has zarr's sync surface.

    Examples
    --------
    >>> import zarr
    >>> store = ManifestStore(zarr.storage.MemoryStore())
    >>> arr = zarr.create_array(store, shape=(4,), chunks=(2,), dtype="i4")
    >>> arr[:] = [1, 2, 3, 4]
    >>> sorted(store.changes)
    ['c/0', 'c/1', 'zarr.json']
    >>> zarr.open_array(store.with_read_only(True), mode="r")[:].tolist()
    [1, 2, 3, 4]
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    atomic_in_process: bool = True

    def __init__(
        self,
        backing: Store,
        entries: Mapping[str, Entry] | None = None,
        *,
        base: Tree | None = None,
        read_only: bool = False,
        verify: bool = True,
        known: Collection[str] = (),
        changes: dict[str, Entry | None] | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self.backing = backing
        self.reader = ObjectReader(backing, verify)
        if base is None:
            base = Tree.from_entries(entries or {}, Loader(backing))
        self.base = base
        self.writer = ObjectWriter(backing, known)
        self._changes: dict[str, Entry | None] = {} if changes is None else changes
        self._dropped: set[str] = set()

    # -- what the session changed --------------------------------------------------------

    @property
    def verify(self) -> bool:
        """Whether every object read is checked against its xxh3-128."""
        return self.reader.verify

    @property
    def changes(self) -> dict[str, Entry | None]:
        """The live ``key -> entry`` map of this session's writes (None: deleted)."""
        return self._changes

    @property
    def dropped(self) -> set[str]:
        """Base nodes removed whole (``delete_dir``) by this session."""
        return self._dropped

    @property
    def known(self) -> Collection[str]:
        return self.writer.known

    written_objects = property(lambda self: self.writer.written_objects)
    written_bytes = property(lambda self: self.writer.written_bytes)
    reused_objects = property(lambda self: self.writer.reused_objects)
    hashed_bytes = property(lambda self: self.writer.hashed_bytes)

    @property
    def entries(self) -> dict[str, Entry]:
        """Every key → entry of the store as a new flat dict (loads every piece)."""
        from zarr.core.sync import sync

        return sync(self._all_entries())

    async def _all_entries(self) -> dict[str, Entry]:
        out = {k: e for k, e in (await self.base.entries()).items() if not self._gone(k)}
        out.update((k, e) for k, e in self._changes.items() if e is not None)
        return out

    def _gone(self, key: str) -> bool:
        if key in self._changes:
            return self._changes[key] is None
        return any(not d or key.startswith(d + "/") for d in self._dropped)

    # -- zarr Store ----------------------------------------------------------------------

    def with_read_only(self, read_only: bool = False) -> Self:
        # docstring inherited
        view = type(self)(
            self.backing,
            base=self.base,
            read_only=read_only,
            verify=self.verify,
            known=self.writer.known,
            changes=self._changes,
        )
        view._dropped = self._dropped
        return view

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ManifestStore)
            and self.backing == other.backing
            and (self.base.inline, self.base.nodes) == (other.base.inline, other.base.nodes)
            and self._changes == other._changes
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "w"
        return f"ManifestStore({self.backing!r}, {len(self._changes)} changes, mode={mode!r})"

    @property
    def _supports_sync_io(self) -> bool:
        return _store_supports_sync_io(self.backing)

    async def _entry(self, key: str) -> Entry | None:
        if key in self._changes or (self._dropped and self._gone(key)):
            return self._changes.get(key)
        return await self.base.get(key)

    def _entry_sync(self, key: str) -> Entry | None:
        if key in self._changes or (self._dropped and self._gone(key)):
            return self._changes.get(key)
        return self.base.get_sync(key)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        if byte_range is not None and not isinstance(byte_range, BYTE_REQUESTS):
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        prototype = prototype or default_buffer_prototype()
        entry = await self._entry(key)
        if entry is None:
            return None
        if isinstance(entry, str) or entry[1] == 0:
            text = entry.encode() if isinstance(entry, str) else b""
            return prototype.buffer.from_bytes(slice_bytes(text, byte_range))
        return await self.reader.read(entry[0], key, prototype, byte_range, entry[1])

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        if byte_range is not None and not isinstance(byte_range, BYTE_REQUESTS):
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        prototype = prototype or default_buffer_prototype()
        entry = self._entry_sync(key)
        if entry is None:
            return None
        if isinstance(entry, str) or entry[1] == 0:
            text = entry.encode() if isinstance(entry, str) else b""
            return prototype.buffer.from_bytes(slice_bytes(text, byte_range))
        return self.reader.read_sync(entry[0], key, prototype, byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return list(await together(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def getsize(self, key: str) -> int:
        # docstring inherited
        entry = await self._entry(key)
        if entry is None:
            raise FileNotFoundError(key)
        return len(entry.encode()) if isinstance(entry, str) else entry[1]

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self._entry(key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        check_key(key)
        text = meta_text(key, value)
        self._changes[key] = text if text is not None else await self.writer.put(value)

    def set_sync(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        check_key(key)
        text = meta_text(key, value)
        self._changes[key] = text if text is not None else self.writer.put_sync(value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited: atomic within one event loop (no await between check and claim)
        self._check_writable()
        if await self._entry(key) is not None or self._changes.get(key) is not None:
            return
        self._changes[key] = ""  # claim the key, then fill it in
        try:
            await self.set(key, value)
        except BaseException:
            self._changes.pop(key, None)
            raise

    async def delete(self, key: str) -> None:
        # docstring inherited: the object stays until garbage collection finds it unnamed
        self._check_writable()
        self._changes[key] = None

    def delete_sync(self, key: str) -> None:
        # docstring inherited
        self._check_writable()
        self._changes[key] = None

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited: whole nodes under ``prefix`` go without loading their pieces
        self._check_writable()
        prefix = prefix.rstrip("/")
        for node in self.base.nodes:
            if not prefix or node == prefix or node.startswith(prefix + "/"):
                self._dropped.add(node)
        async for key in self.list_prefix(f"{prefix}/" if prefix else ""):
            self._changes[key] = None

    # -- listing -------------------------------------------------------------------------

    async def _keys(self, prefix: str, direct: bool = False) -> list[str]:
        return await keys_under(
            self.base, self._changes, self._dropped, prefix, self._gone, direct=direct
        )

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._keys(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._keys(prefix):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        prefix = prefix.rstrip("/")
        start = f"{prefix}/" if prefix else ""
        seen: set[str] = set()
        for key in await self._keys(start, direct=True):
            if key.startswith(start):
                child = key[len(start) :].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield child
