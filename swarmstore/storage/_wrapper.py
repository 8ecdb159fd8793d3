"""NodeWrapper: a node that delegates every operation to another (faults, link models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmstore.storage._node import Node, _name_hash

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Outcome, Pending, Read, State

__all__ = ["NodeWrapper"]


class NodeWrapper(Node):
    """A node that delegates every operation to ``inner``: subclass and override a few.

    ``swarmstore.testing.FaultyNode`` and benchmark link models build on it, so a new node
    operation needs one line here rather than one in every wrapper.
    """

    def __init__(self, inner: Node) -> None:
        super().__init__(inner.name, weight=inner.weight, zone=inner.zone, host=inner.host)
        self.inner = inner
        self.store = inner.store
        self.supports_sync = inner.supports_sync

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.inner == other.inner  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return _name_hash(self.name)

    def place(self) -> str:
        return self.inner.place()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        return await self.inner.read(key, start, end)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        return await self.inner.state(key, tomb=tomb)

    async def prepare(self, key: str, data: bytes) -> Pending:
        return await self.inner.prepare(key, data)

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        return await self.inner.commit(pending, record, create=create, force=force, heal=heal)

    async def abort(self, pending: Pending) -> None:
        await self.inner.abort(pending)

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        return await self.inner.bury(key, tomb, seen)

    async def unbury(self, key: str, tomb: Record) -> None:
        await self.inner.unbury(key, tomb)

    async def remove(self, key: str, version: Version | None = None) -> bool:
        return await self.inner.remove(key, version)

    async def meta_put(self, name: str, body: bytes) -> None:
        await self.inner.meta_put(name, body)

    async def park(self, pending: Pending, name: str, body: bytes) -> None:
        await self.inner.park(pending, name, body)

    async def meta_get(self, name: str) -> bytes | None:
        return await self.inner.meta_get(name)

    async def meta_list(self, area: str) -> list[str]:
        return await self.inner.meta_list(area)

    async def meta_delete(self, name: str) -> None:
        await self.inner.meta_delete(name)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self.inner.list_keys(prefix)

    async def list_entries(self, prefix: str) -> list[str]:
        return await self.inner.list_entries(prefix)

    async def prune(self, prefix: str) -> None:
        await self.inner.prune(prefix)

    def read_now(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        return self.inner.read_now(key, start, end)  # type: ignore[attr-defined, no-any-return]

    def state_now(self, key: str, *, tomb: bool | None = None) -> State:
        return self.inner.state_now(key, tomb=tomb)  # type: ignore[attr-defined, no-any-return]

    def allow_create(self, create: bool) -> None:
        self.inner.allow_create(create)

    def root_exists(self) -> bool | None:
        return self.inner.root_exists()

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()
