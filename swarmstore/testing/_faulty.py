"""FaultyStore: a zarr store wrapper that injects latency, errors, outages and corruption.

Faults are described by a :class:`Faults` object that can be flipped while a test
runs (``faults.down = True``). The same ``Faults`` drives the storage node built from
a FaultyStore (see ``as_node``), so a ReplicatedStore over FaultyStores sees exactly
the faults a test sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from zarr.abc.store import ByteRequest, Store
from zarr.storage import WrapperStore

from swarmstore.testing._faults import Faults, flip_byte

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["Faults", "FaultyStore", "flip_byte"]


class FaultyStore(WrapperStore[Store]):
    """Wrap any zarr store and inject the faults described by ``faults``."""

    def __init__(self, store: Store, faults: Faults | None = None, name: str | None = None):
        super().__init__(store)
        self.faults = faults if faults is not None else Faults()
        self.name = name or str(store)

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, self.faults, self.name)

    def __repr__(self) -> str:
        return f"FaultyStore({self._store!r}, {self.faults!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FaultyStore) and self._store == other._store

    def as_node(self, **kwargs: Any) -> Any:
        """The storage node for this store: the wrapped store's node, with these faults."""
        from swarmstore.storage import node_from
        from swarmstore.testing._faulty_node import FaultyNode

        kwargs.setdefault("name", self.name)
        return FaultyNode(node_from(self._store, **kwargs), self.faults)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        await self.faults.before("get", self.name)
        value = await self._store.get(key, prototype, byte_range)
        if value is not None and self.faults.corrupts(key):
            value = prototype.buffer.from_bytes(flip_byte(value.to_bytes()))
        return value

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    get_ranges = Store.get_ranges  # coalesce over self.get, so faults apply to partial reads
    delete_dir = Store.delete_dir
    getsize = Store.getsize

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self.faults.before_sync("get", self.name)
        value = self._store.get_sync(key, prototype=prototype, byte_range=byte_range)  # type: ignore[attr-defined]
        if value is not None and self.faults.corrupts(key):
            value = type(value).from_bytes(flip_byte(value.to_bytes()))
        return value  # type: ignore[no-any-return]

    def set_sync(self, key: str, value: Buffer) -> None:
        self.faults.before_sync("set", self.name, write=True)
        self._store.set_sync(key, value)  # type: ignore[attr-defined]

    def delete_sync(self, key: str) -> None:
        self.faults.before_sync("delete", self.name, write=True)
        self._store.delete_sync(key)  # type: ignore[attr-defined]

    async def set(self, key: str, value: Buffer) -> None:
        await self.faults.before("set", self.name, write=True)
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self.faults.before("set", self.name, write=True)
        await self._store.set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        await self.faults.before("delete", self.name, write=True)
        await self._store.delete(key)

    async def exists(self, key: str) -> bool:
        await self.faults.before("exists", self.name)
        return await self._store.exists(key)

    async def list(self) -> AsyncIterator[str]:
        await self.faults.before("list", self.name)
        async for k in self._store.list():
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        await self.faults.before("list", self.name)
        async for k in self._store.list_prefix(prefix):
            yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        await self.faults.before("list", self.name)
        async for k in self._store.list_dir(prefix):
            yield k
