"""TieredStore: serve zarr reads from RAM, then local disk (or any tiers), then the backing."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import xxhash
from dask.utils import format_bytes
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import swarmstore.cache._coherence as _coherence
from swarmstore import config
from swarmstore._together import together
from swarmstore.cache._disk import DiskTier
from swarmstore.cache._flight import Flights
from swarmstore.cache._identity import store_identity
from swarmstore.cache._memory import MemoryTier
from swarmstore.cache._readpath import ReadPath
from swarmstore.cache._span import span_of
from swarmstore.cache._writepath import WritePath

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from swarmstore.cache._tier import Tier

__all__ = ["TieredStore"]

logger = logging.getLogger(__name__)

type DiskLike = DiskTier | str | os.PathLike[str] | Literal[False] | None


@dataclass
class _Shared:
    """What a TieredStore shares with its ``with_read_only`` twins: tiers, flights, counters."""

    tiers: tuple[Tier, ...]
    flights: Flights = field(default_factory=Flights)
    #: tiers that failed to drop a key after a write: never read again (they may be stale)
    distrusted: set[str] = field(default_factory=set)
    reads: int = 0
    read_bytes: int = 0
    errors: int = 0
    stale_served: int = 0

    @property
    def digests(self) -> bool:
        """Whether fills record their bytes' digest (a tier serves them to peers)."""
        return any(getattr(t, "records_digests", False) for t in self.tiers)


class TieredStore(ReadPath, WritePath, Store):
    """Serve reads from RAM, then local disk; on a miss read ``backing`` and back-fill.

    Parameters
    ----------
    backing : zarr.abc.store.Store
        The authoritative store; the tiers only ever hold copies of its bytes.
    memory_bytes : int or str, optional
        Budget of the RAM tier (0 disables it). Default: ``swarmstore.cache.memory-bytes``.
    disk : DiskTier, path, False or None
        The disk tier; a path makes ``DiskTier(path)``; False means none; None reads config
        ``swarmstore.cache.disk-dir`` (null: none).
    tiers : sequence of tiers, optional
        The whole chain, fastest first (any objects with the ``_tier.Tier`` protocol: a
        GPU tier, a peer tier); replaces ``memory_bytes``/``memory``/``disk``.
    ttl : float or str, optional
        Seconds a cached value is trusted; after that it is revalidated by the backing
        store's version token (refetched if it changed). Default: ``swarmstore.cache.ttl``.
    validate : bool, optional
        Revalidate on every hit. Default: ``swarmstore.cache.validate``.
    admission_fraction : float, optional
        Values larger than this fraction of ``memory_bytes`` skip the RAM tier.
    namespace : str, optional
        Keeps this store's entries apart from other stores' in shared tiers. Default: a
        hash of ``store_identity(backing)``, equal in every process for the same store.
    memory : MemoryTier, optional
        A RAM tier shared with other stores (then ``memory_bytes`` is its bound).
    read_only : bool
        Refuse writes.
    sync_io : bool, optional
        Offer zarr's sync path (``get_sync``...). Default: ``swarmstore.cache.sync-io``.
    coherence : bool, optional
        On a Dask worker with TieredCachePlugin, announce each write to every worker
        (``_coherence``). Default: ``swarmstore.cache.coherence``.

    Notes
    -----
    Writes and deletes go to ``backing`` first, then drop the key from every tier, lowest
    first, and stop in-flight reads of it from filling any tier (tickets, ``_tier``), so
    nothing written or deleted through this store is served stale by it. On a Dask worker
    with :class:`~swarmstore.cache.TieredCachePlugin`, the write is also announced to
    every worker before the writing task finishes (``_coherence``). Concurrent misses of
    one entry share one backing read per process, and per host through the disk tier.

    If the backing store fails, cached values (even expired ones) are served; others raise
    :class:`~swarmstore.errors.NodeUnavailable` for transport errors. A tier that fails to
    drop a key is bypassed from then on, with a :class:`~swarmstore.errors.CacheWarning`.
    Thread- and asyncio-safe; pickles as its settings (a copy starts with empty RAM).

    Examples
    --------
    >>> import zarr, numpy as np
    >>> from zarr.storage import MemoryStore
    >>> store = TieredStore(MemoryStore(), memory_bytes=2**20, disk=False)
    >>> z = zarr.create_array(store, shape=(4,), chunks=(2,), dtype="i4")
    >>> z[:] = np.arange(4)
    >>> _ = z[:], z[:]
    >>> store.stats()["memory"]["hits"] >= 2
    True
    """

    #: a cache of ``backing``: a store that must see every write and every listing (a
    #: checkpoint's commits and refs) asks for it instead of this one (``backing``)
    is_cache = True

    def __init__(
        self,
        backing: Store,
        memory_bytes: int | str | None = None,
        disk: DiskLike = None,
        *,
        tiers: Sequence[Tier] | None = None,
        ttl: float | str | None = None,
        validate: bool | None = None,
        admission_fraction: float | None = None,
        namespace: str | None = None,
        memory: MemoryTier | None = None,
        read_only: bool = False,
        sync_io: bool | None = None,
        coherence: bool | None = None,
        _shared: _Shared | None = None,
        _announce: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self.backing = backing
        self.ttl = config.value("cache.ttl", ttl)
        self.validate = bool(config.value("cache.validate", validate))
        self.sync_io = bool(config.value("cache.sync-io", sync_io))
        self.coherent = bool(config.value("cache.coherence", coherence))
        self.admission_fraction = float(
            config.value("cache.memory-admission-fraction", admission_fraction)
        )
        self.namespace = namespace or xxhash.xxh3_64_hexdigest(store_identity(backing).encode())
        self._explicit_tiers = tiers is not None
        if _shared is None:
            if tiers is None:
                tiers = self._default_tiers(memory_bytes, disk, memory)
            _shared = _Shared(tuple(tiers))
        self._shared = _shared
        self._announce = _announce or _coherence.current_announcer()

    def _default_tiers(
        self, memory_bytes: int | str | None, disk: DiskLike, memory: MemoryTier | None
    ) -> list[Tier]:
        if memory is None:
            budget = int(config.value("cache.memory-bytes", memory_bytes))
            memory = MemoryTier(budget, self.admission_fraction)
        out: list[Tier] = [memory]
        disk_tier = _make_disk(disk)
        if disk_tier is not None:
            out.append(disk_tier)
        return out

    # -- the tiers ----------------------------------------------------------------------

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers, fastest first."""
        return self._shared.tiers

    @property
    def memory(self) -> MemoryTier | None:
        return next((t for t in self.tiers if isinstance(t, MemoryTier)), None)

    @property
    def disk(self) -> DiskTier | None:
        return next((t for t in self.tiers if isinstance(t, DiskTier)), None)

    @property
    def memory_bytes(self) -> int:
        memory = self.memory
        return memory.max_bytes if memory is not None else 0

    # -- identity and pickling ----------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backing": self.backing,
            "ttl": self.ttl,
            "validate": self.validate,
            "admission_fraction": self.admission_fraction,
            "namespace": self.namespace,
            "read_only": self.read_only,
            "sync_io": self.sync_io,
            "coherence": self.coherent,
        }
        if self._explicit_tiers:
            out["tiers"] = self.tiers
        else:
            out["memory_bytes"] = self.memory_bytes
            out["disk"] = self.disk if self.disk is not None else False
        return out

    def __getstate__(self) -> dict[str, Any]:
        return self._settings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def with_read_only(self, read_only: bool = False) -> TieredStore:
        # docstring inherited; the copy shares this store's tiers
        settings = self._settings()
        settings.update(backing=self.backing.with_read_only(read_only), read_only=read_only)
        return TieredStore(**settings, _shared=self._shared, _announce=self._announce)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TieredStore)
            and (
                self.backing == other.backing
                or store_identity(self.backing) == store_identity(other.backing)
            )
            and self.read_only == other.read_only
            and self.memory_bytes == other.memory_bytes
            and self.disk == other.disk
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        chain = " -> ".join(
            f"memory {format_bytes(t.max_bytes)}" if isinstance(t, MemoryTier) else repr(t)
            for t in self.tiers
        )
        return f"TieredStore({chain} -> {self.backing!r})"

    def __str__(self) -> str:
        return f"tiered::{self.backing}"

    # -- capabilities and lifecycle -----------------------------------------------------

    @property
    def supports_writes(self) -> bool:  # type: ignore[override]
        return self.backing.supports_writes

    @property
    def supports_deletes(self) -> bool:  # type: ignore[override]
        return self.backing.supports_deletes

    @property
    def supports_listing(self) -> bool:  # type: ignore[override]
        return self.backing.supports_listing

    @property
    def supports_consolidated_metadata(self) -> bool:
        return self.backing.supports_consolidated_metadata

    @property
    def _supports_sync_io(self) -> bool:
        """zarr's sync-path flag (``zarr.abc.store._store_supports_sync_io``): hits never
        need a loop; misses use the backing store's sync path or run its async one."""
        return self.sync_io

    supports_sync_io = _supports_sync_io

    async def _open(self) -> None:
        await super()._open()
        await self.backing._ensure_open()
        if self.disk is not None:
            import asyncio

            await asyncio.to_thread(self.disk.open)  # directory, index: off the event loop

    def flush(self) -> None:
        """Wait for background disk fills; flush the backing store if it can."""
        for tier in self.tiers:
            tier.flush()
        backing_flush = getattr(self.backing, "flush", None)
        if callable(backing_flush):
            result = backing_flush()
            if inspect.isawaitable(result):  # ReplicatedStore.flush is async
                sync(result)

    def close(self) -> None:
        """Flush and release the tiers (the disk tier's index, thread, locks) and the backing."""
        for tier in self.tiers:
            tier.close()
        self.backing.close()
        super().close()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tier (by name): hits, misses, bytes, evictions...; and backing-store reads."""
        sh = self._shared
        out = {tier.name: tier.stats() for tier in sh.tiers}
        out["backing"] = {
            "reads": sh.reads,
            "bytes": sh.read_bytes,
            "errors": sh.errors,
            "coalesced": sh.flights.coalesced,
            "stale_served": sh.stale_served,
        }
        return out

    # -- reads --------------------------------------------------------------------------

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        if not self._is_open:
            await self._ensure_open()
        entry = await self._read(key, span_of(byte_range), byte_range, prototype)
        return None if entry.data is None else prototype.buffer.from_bytes(entry.data)

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """:meth:`get` with no event loop on a hit (zarr's sync path)."""
        prototype = prototype or default_buffer_prototype()
        entry = self._read_sync(key, span_of(byte_range), byte_range, prototype)
        return None if entry.data is None else prototype.buffer.from_bytes(entry.data)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited

        return list(await together(*(self.get(k, prototype, r) for k, r in key_ranges)))

    # -- everything else goes straight to the backing store ------------------------------

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self.backing.exists(key)

    async def getsize(self, key: str) -> int:
        # docstring inherited
        return await self.backing.getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        # docstring inherited
        return await self.backing.getsize_prefix(prefix)

    async def is_empty(self, prefix: str) -> bool:
        # docstring inherited
        return await self.backing.is_empty(prefix)

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.backing.list():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.backing.list_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.backing.list_dir(prefix):
            yield key


def _make_disk(disk: DiskLike) -> DiskTier | None:
    if disk is False:
        return None
    if isinstance(disk, DiskTier):
        return disk
    if disk is None:
        disk = config.value("cache.disk-dir")
        if disk is None:
            return None
    return DiskTier(disk)
