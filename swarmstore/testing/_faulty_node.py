"""FaultyNode: a storage node with injected faults (built by ``FaultyStore.as_node``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmstore.storage._node import Node, Pending
from swarmstore.testing._faulty import Faults, flip_byte

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Record

__all__ = ["FaultyNode"]


class FaultyNode(Node):
    """Wrap a node; every operation first passes through ``faults``."""

    def __init__(self, inner: Node, faults: Faults) -> None:
        super().__init__(inner.name, weight=inner.weight, zone=inner.zone, host=inner.host)
        self.inner = inner
        self.faults = faults
        self.store = inner.store

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FaultyNode) and self.inner == other.inner

    def __hash__(self) -> int:
        return hash(self.name)

    async def read(self, key: str, start: int = 0, end: int | None = None):
        await self.faults.before("get", self.name)
        got = await self.inner.read(key, start, end)
        if got is not None and self.faults.corrupts(key):
            return flip_byte(got[0]), got[1], got[2]
        return got

    async def head(self, key: str):
        await self.faults.before("head", self.name)
        return await self.inner.head(key)

    async def prepare(self, key: str, data: bytes, record: Record) -> Pending:
        await self.faults.before("set", self.name, write=True)
        return await self.inner.prepare(key, data, record)

    async def commit(self, pending: Pending) -> None:
        await self.faults.before("commit", self.name, write=True)
        await self.inner.commit(pending)

    async def abort(self, pending: Pending) -> None:
        await self.inner.abort(pending)

    async def write(self, key: str, data: bytes, record: Record) -> None:
        await self.faults.before("set", self.name, write=True)
        await self.inner.write(key, data, record)

    async def create(self, key: str, data: bytes, record: Record) -> bool:
        await self.faults.before("set", self.name, write=True)
        return await self.inner.create(key, data, record)

    async def delete(self, key: str) -> None:
        await self.faults.before("delete", self.name, write=True)
        await self.inner.delete(key)

    async def list_prefix(self, prefix: str) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.list_prefix(prefix)

    async def list_dir(self, prefix: str) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.list_dir(prefix)

    async def delete_dir(self, prefix: str) -> None:
        await self.faults.before("delete", self.name, write=True)
        await self.inner.delete_dir(prefix)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
