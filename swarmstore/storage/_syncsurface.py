"""zarr's sync store surface (``get_sync``, ``set_sync``, ``delete_sync``) for ReplicatedStore.

Over nodes that all have a sync form (local directories, memory nodes) the methods run in
the calling thread with no event loop: reads by :mod:`swarmstore.storage._syncread`,
writes and deletes by :mod:`swarmstore.storage._syncwrite`, each the same protocol as the
async twin (verified replicas, quorum reads, compare-and-swap writes, hints), deciding with
the same objects. Whatever those cannot settle alone (a stale or unrecorded replica, a
failing node, pending hints, a store's first sync call, which opens it and has the router
make its node entries on the loop) and every call on a store with other nodes (S3, generic
fsspec stores) runs the async twin on zarr's I/O loop (:mod:`swarmstore._sync`) instead.

So the store tells zarr to take its fused sync fast path (``_supports_sync_io``) exactly
when every node has a sync form: that path calls ``get_sync`` per chunk from worker
threads, which must not each park on a hop back to the loop.

What is left: a call that falls back to the loop from inside zarr's fused pipeline parks
its thread on the loop, whose local-node work runs in the loop's default executor, the
same pool the pipeline's batches run in. Only when as many batches as that pool has
threads (``min(32, cpu + 4)``) all fall back at once could they wait on each other; sync
reads and writes over healthy replicas never fall back. Sync calls do not feed the
router's statistics or circuit breakers (they order replicas by what it learned).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, default_buffer_prototype

from swarmstore import _sync
from swarmstore.storage._node import check_key
from swarmstore.storage._syncread import all_sync, read_now
from swarmstore.storage._syncwrite import delete_now, put_now

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

    from swarmstore.network import TransferRouter
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._fragments import CodingPolicy
    from swarmstore.storage._node import Node

__all__ = ["SyncSurface"]


def _name(node: Node) -> str:
    return node.name


class SyncSurface:
    """Mixed into :class:`~swarmstore.storage.ReplicatedStore`: blocking forms of get, set
    and delete, callable from any thread but the I/O loop's (there, await the async ones)."""

    if TYPE_CHECKING:  # provided by the store
        nodes: list[Node]
        router: TransferRouter
        read_only: bool
        _is_open: bool
        coding: CodingPolicy

        async def get(
            self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
        ) -> Buffer | None: ...

        async def set(self, key: str, value: Buffer) -> None: ...

        async def delete(self, key: str) -> None: ...

        def _check_writable(self) -> None: ...

    #: whether the router knows every node: its per-node entries are made once, on the loop
    _nodes_known = False

    def _fast(self, key: str) -> bool:
        """Whether the in-thread path may run: the store is open, the router holds an
        entry for every node, made on the I/O loop (sync threads then only read them),
        and ``key`` is replicated (erasure-coded keys take the loop path)."""
        return self._is_open and self._nodes_known and self.coding.for_key(key) is None

    def _on_loop[T](self, coro: Coroutine[Any, Any, T]) -> T:
        """The async twin on zarr's I/O loop; there, also the router's node entries."""

        async def run() -> T:
            try:
                return await coro
            finally:
                self.router.order(self.nodes, _name)  # makes the entries, on the loop
                self._nodes_known = True

        return _sync.run(run())

    @property
    def _supports_sync_io(self) -> bool:
        """Whether zarr may take its fused sync path: every node reads in this thread."""
        return all_sync(self.nodes)

    def _coordinator(self) -> Coordinator:
        return self  # type: ignore[return-value]

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """:meth:`get`, blocking: the value, verified and no older than any acknowledged
        write, or None."""
        prototype = prototype or default_buffer_prototype()
        if byte_range is not None and not isinstance(
            byte_range, (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)
        ):
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        check_key(key)
        verdict = read_now(self._coordinator(), key, byte_range) if self._fast(key) else None
        if verdict is None:
            return self._on_loop(self.get(key, prototype, byte_range))
        if verdict.got is not None:
            return prototype.buffer.from_bytes(verdict.got.data)
        return None

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set`, blocking: returns once a write quorum acknowledged."""
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(
                f"ReplicatedStore.set(): `value` must be a Buffer instance. "
                f"Got an instance of {type(value)} instead."
            )
        check_key(key)
        if not self._fast(key) or put_now(self._coordinator(), key, value.to_bytes()) is None:
            self._on_loop(self.set(key, value))

    def delete_sync(self, key: str) -> None:
        """:meth:`delete`, blocking: a versioned tombstone on a write quorum."""
        self._check_writable()
        check_key(key)
        if not self._fast(key) or not delete_now(self._coordinator(), key):
            self._on_loop(self.delete(key))
