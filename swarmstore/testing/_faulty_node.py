"""FaultyNode: a storage node with injected faults (built by ``FaultyStore.as_node``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore.errors import NodeUnavailable
from swarmstore.storage._wrapper import NodeWrapper
from swarmstore.testing._faults import Faults, flip_byte

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Record, Version
    from swarmstore.storage._node import Node, Outcome, Pending, Read, State

__all__ = ["FaultyNode"]


class FaultyNode(NodeWrapper):
    """Wrap a node; every operation first passes through ``faults`` (see :class:`Faults`)."""

    def __init__(self, inner: Node, faults: Faults) -> None:
        super().__init__(inner)
        self.faults = faults

    @property  # type: ignore[override]
    def supports_sync(self) -> bool:
        return self.inner.supports_sync and self.faults.immediate

    @supports_sync.setter
    def supports_sync(self, value: bool) -> None:
        pass

    # --- reads ---------------------------------------------------------------------------
    def _rot(self, key: str, got: Read | None) -> Read | None:
        if got is not None and self.faults.corrupts(key):
            from swarmstore.storage._node import Read

            return Read(flip_byte(got.data), got.record, got.size)
        return got

    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        await self.faults.before("get", self.name)
        return self._rot(key, await self.inner.read(key, start, end))

    def read_now(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        self.faults.before_sync("get", self.name)
        return self._rot(key, self.inner.read_now(key, start, end))  # type: ignore[attr-defined]

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        await self.faults.before("head", self.name)
        return await self.inner.state(key, tomb=tomb)

    def state_now(self, key: str, *, tomb: bool | None = None) -> State:
        self.faults.before_sync("head", self.name)
        return self.inner.state_now(key, tomb=tomb)  # type: ignore[attr-defined, no-any-return]

    # --- writes --------------------------------------------------------------------------
    async def prepare(self, key: str, data: bytes) -> Pending:
        await self.faults.before("set", self.name)
        pending = await self.inner.prepare(key, data)
        if self.faults.full_disk or self.faults.read_only or self.faults.fail_writes:
            await self.inner.abort(pending)
            try:
                self.faults.refuse_write("set", self.name)
            except NodeUnavailable:
                raise
            except OSError as e:  # the node answered phase 1, staging failed
                pending.error, pending.token = e, None
                return pending
        if "prepare" in self.faults.half:
            raise NodeUnavailable(f"{self.name}: staged, answer lost (injected crash)")
        self.faults.after("prepare", self.name)
        return pending

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        await self.faults.before("commit", self.name, write=True)
        if "commit" in self.faults.half:
            raise NodeUnavailable(f"{self.name}: commit abandoned halfway (injected crash)")
        outcome = await self.inner.commit(pending, record, create=create, force=force, heal=heal)
        self.faults.after("commit", self.name)
        return outcome

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        await self.faults.before("delete", self.name, write=True)
        if "bury" in self.faults.half:  # a crash between the tombstone and the data's removal
            await self._bury_halfway(key, tomb, seen)
            raise NodeUnavailable(f"{self.name}: tombstone written, data kept (injected crash)")
        outcome = await self.inner.bury(key, tomb, seen)
        self.faults.after("bury", self.name)
        return outcome

    async def _bury_halfway(self, key: str, tomb: Record, seen: State) -> None:
        """What a crash between a delete's two steps leaves: the tombstone (written first)
        and the data it outranks (not removed yet)."""
        try:
            held = await self.inner.read(key)
        except Exception:  # unreadable data: the crash leaves it as it is
            held = None
        await self.inner.bury(key, tomb, seen)
        if held is not None and held.record is not None and held.record.version < tomb.version:
            await self.inner.write(key, held.data, held.record)

    async def unbury(self, key: str, tomb: Record) -> None:
        await self.faults.before("delete", self.name, write=True)
        await self.inner.unbury(key, tomb)

    async def remove(self, key: str, version: Version | None = None) -> bool:
        await self.faults.before("delete", self.name, write=True)
        done = await self.inner.remove(key, version)
        self.faults.after("remove", self.name)
        return done

    async def meta_put(self, name: str, body: bytes) -> None:
        await self.faults.before("meta", self.name, write=True)
        await self.inner.meta_put(name, body)

    async def meta_get(self, name: str) -> bytes | None:
        await self.faults.before("meta", self.name)
        return await self.inner.meta_get(name)

    async def meta_list(self, area: str) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.meta_list(area)

    async def meta_delete(self, name: str) -> None:
        await self.faults.before("meta", self.name, write=True)
        await self.inner.meta_delete(name)

    async def tombstones(self) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.tombstones()

    # --- listing -------------------------------------------------------------------------
    async def list_keys(self, prefix: str) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.list_keys(prefix)

    async def list_entries(self, prefix: str) -> list[str]:
        await self.faults.before("list", self.name)
        return await self.inner.list_entries(prefix)

    async def prune(self, prefix: str) -> None:
        await self.faults.before("delete", self.name, write=True)
        await self.inner.prune(prefix)
