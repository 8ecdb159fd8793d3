"""LocalNode: a directory; each file's checksum record is its ``user.swarmstore.xxh3`` xattr.

Writes go to a temp file in the target directory, then one ``rename`` publishes bytes and
record together: a kill -9 at any moment leaves either the old file or the new one. The
compare (the node's current version) and the swap (rename, unlink) run under an exclusive
``flock`` of the node root, so writers in other processes on this host never interleave
between them. Tombstones are empty files under ``.swarmstore/t/`` carrying their record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.storage import LocalStore

from swarmstore.storage._localdir import XATTR, Dir
from swarmstore.storage._node import Node, Outcome, Pending, Read, State, check_key

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.storage._integrity import Record, Version

__all__ = ["XATTR", "LocalNode"]


class LocalNode(Node):
    """A directory. See the module docstring for the on-disk layout and the write protocol.

    A missing root is an outage (:class:`NodeUnavailable`), never silently created: a
    missing mount point must not fill the root disk. ``create=True`` (or
    ``ReplicatedStore(..., create=True)``, or a brand-new store whose roots all are
    missing) lets writes create it.
    """

    supports_sync = True
    #: sync forms of the write steps (``prepare_now``, ``commit_now``...): see _syncwrite
    supports_sync_write = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
        fsync: bool = False,
        create: bool = False,
    ) -> None:
        self.root = Path(root)
        super().__init__(
            name or f"file://{self.root}", weight=weight, zone=zone, host=host or _hostname()
        )
        self.fsync = fsync
        self._dir = Dir(self.root, self.name, fsync)
        self._dir.create = create
        self.store = LocalStore(self.root)

    def allow_create(self, create: bool) -> None:
        self._dir.create = create

    def root_exists(self) -> bool | None:
        return self.root.is_dir()

    def _key(self, key: str) -> str:
        return check_key(key)

    def read_now(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        return self._dir.read(self._key(key), start, end)

    def state_now(self, key: str, *, tomb: bool | None = None) -> State:
        return self._dir.state(self._key(key), tomb)

    def prepare_now(self, key: str, data: bytes) -> Pending:
        return self._dir.prepare(self._key(key), data)

    def commit_now(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        return self._dir.commit(pending, record, (create, force, heal))

    def abort_now(self, pending: Pending) -> None:
        if pending.token is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending.token)

    def bury_now(self, key: str, tomb: Record, seen: State) -> Outcome:
        return self._dir.bury(self._key(key), tomb, seen)

    def unbury_now(self, key: str, tomb: Record) -> None:
        self._dir.unbury(self._key(key), tomb)

    def remove_now(self, key: str, version: Version | None = None) -> bool:
        return self._dir.remove(self._key(key), version)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> Read | None:
        return await asyncio.to_thread(self._dir.read, self._key(key), start, end)

    async def state(self, key: str, *, tomb: bool | None = None) -> State:
        return await asyncio.to_thread(self._dir.state, self._key(key), tomb)

    async def prepare(self, key: str, data: bytes) -> Pending:
        return await asyncio.to_thread(self._dir.prepare, self._key(key), data)

    async def commit(
        self,
        pending: Pending,
        record: Record,
        *,
        create: bool = False,
        force: bool = False,
        heal: bool = False,
    ) -> Outcome:
        how = (create, force, heal)
        if self.fsync:
            return await asyncio.to_thread(self._dir.commit, pending, record, how)
        # metadata syscalls of microseconds (setxattr, flock, stat, rename): no thread hop
        return self._dir.commit(pending, record, how)

    async def abort(self, pending: Pending) -> None:
        if pending.token is not None:  # one unlink: a metadata syscall, no thread hop
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending.token)

    async def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        return await asyncio.to_thread(self._dir.bury, self._key(key), tomb, seen)

    async def unbury(self, key: str, tomb: Record) -> None:
        await asyncio.to_thread(self._dir.unbury, self._key(key), tomb)

    async def remove(self, key: str, version: Version | None = None) -> bool:
        return await asyncio.to_thread(self._dir.remove, self._key(key), version)

    async def meta_put(self, name: str, body: bytes) -> None:
        def put() -> None:
            self._dir.ensure_root()
            self._dir._put_meta(name, body)

        await asyncio.to_thread(put)

    async def park(self, pending: Pending, name: str, body: bytes) -> None:
        def put() -> None:
            self._dir.ensure_root()
            self._dir.park(pending, name, body)

        await asyncio.to_thread(put)

    async def meta_get(self, name: str) -> bytes | None:
        return await asyncio.to_thread(self._dir.meta_get, name)

    async def meta_list(self, area: str) -> list[str]:
        return await asyncio.to_thread(self._dir.meta_list, area)

    async def meta_delete(self, name: str) -> None:
        await asyncio.to_thread(self._dir._drop_meta, name)

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._dir.list_keys, prefix)

    async def list_entries(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._dir.list_entries, prefix)

    async def prune(self, prefix: str) -> None:
        await asyncio.to_thread(self._dir.prune, prefix)

    def place(self) -> str:
        return f"file://{self.root.absolute()}"

    def __reduce__(self) -> Any:
        attrs = {"name": self.name, "weight": self.weight, "zone": self.zone, "host": self.host}
        return (_rebuild, (str(self.root), attrs, self.fsync, self._dir.create))


def _rebuild(root: str, attrs: dict[str, Any], fsync: bool, create: bool) -> LocalNode:
    return LocalNode(root, fsync=fsync, create=create, **attrs)


def _hostname() -> str:
    return socket.gethostname()
