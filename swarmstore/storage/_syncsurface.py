"""zarr's sync store surface (``get_sync``, ``set_sync``, ``delete_sync``) for ReplicatedStore.

Each method runs the same quorum coroutine as its async twin on zarr's I/O loop
(:mod:`swarmstore._sync`), so a sync caller gets exactly the async guarantees: verified
replicas, quorum reads, compare-and-swap writes. The store still tells zarr not to take its
fused sync fast path (``_supports_sync_io`` is False): that path calls ``get_sync`` once per
chunk from worker threads, and each call would park a thread on a hop back to the loop, whose
local-node reads need threads of the same pool. zarr then keeps using the async path, which
reads chunks concurrently on the loop. A direct fast path (local nodes read in the calling
thread) is not built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zarr.core.buffer import default_buffer_prototype

from swarmstore import _sync

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["SyncSurface"]


class SyncSurface:
    """Mixed into :class:`~swarmstore.storage.ReplicatedStore`: blocking forms of get, set
    and delete, callable from any thread but the I/O loop's (there, await the async ones)."""

    #: zarr's fused pipeline must not take the per-chunk sync path (module docstring)
    _supports_sync_io = False

    if TYPE_CHECKING:  # provided by the store

        async def get(
            self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
        ) -> Buffer | None: ...

        async def set(self, key: str, value: Buffer) -> None: ...

        async def delete(self, key: str) -> None: ...

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """:meth:`get`, blocking: the value, verified and no older than any acknowledged
        write, or None."""
        return _sync.run(self.get(key, prototype or default_buffer_prototype(), byte_range))

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set`, blocking: returns once a write quorum acknowledged."""
        _sync.run(self.set(key, value))

    def delete_sync(self, key: str) -> None:
        """:meth:`delete`, blocking: a versioned tombstone on a write quorum."""
        _sync.run(self.delete(key))
