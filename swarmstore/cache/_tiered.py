"""TieredStore: serve zarr reads from RAM, then local disk, then the backing store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import xxhash
from dask.utils import format_bytes
from zarr.abc.store import Store
from zarr.core.sync import sync

from swarmstore import config
from swarmstore.cache._disk import DiskTier
from swarmstore.cache._identity import store_identity, version_token
from swarmstore.cache._memory import Entry, MemoryTier
from swarmstore.cache._span import Span, span_of
from swarmstore.errors import CacheWarning, NodeUnavailable, SwarmError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["TieredStore"]

logger = logging.getLogger(__name__)

type DiskLike = DiskTier | str | os.PathLike[str] | Literal[False] | None

_KEEP_INVALIDATIONS_NS = 3600 * 10**9
#: a disk hit's view of its file is kept in RAM as is (no copy) when the rest of the file
#: (the header) is at most this many bytes; a smaller range is copied out
_VIEW_SLACK = 64 << 10


class _LeaderCancelled(Exception):
    """The task fetching a key for others was cancelled: the others fetch it themselves."""


@dataclass
class _Shared:
    """What a TieredStore shares with its ``with_read_only`` twins: tiers and in-flight reads."""

    memory: MemoryTier
    disk: DiskTier | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[tuple[str, Span], concurrent.futures.Future[bytes | None]] = field(
        default_factory=dict
    )
    #: time.time_ns() of the last write/delete of each key (and prefix) through this cache
    invalidated: dict[str, int] = field(default_factory=dict)
    prefixes: dict[str, int] = field(default_factory=dict)
    disk_trusted: bool = True
    reads: int = 0
    read_bytes: int = 0
    errors: int = 0
    coalesced: int = 0
    stale_served: int = 0

    def invalidated_since(self, key: str, started_ns: int) -> bool:
        if self.invalidated.get(key, 0) >= started_ns:
            return True
        return any(t >= started_ns and key.startswith(p) for p, t in self.prefixes.items())


class TieredStore(Store):
    """Serve reads from RAM, then local disk; on a miss read ``backing`` and back-fill.

    Parameters
    ----------
    backing : zarr.abc.store.Store
        The authoritative store; the tiers only ever hold copies of its bytes.
    memory_bytes : int or str, optional
        Budget of the RAM tier (0 disables it); least recently used values leave first.
        Default: config ``swarmstore.cache.memory-bytes``.
    disk : DiskTier, path, False or None
        The disk tier; a path makes ``DiskTier(path)``; False means none; None reads config
        ``swarmstore.cache.disk-dir`` (null: none).
    ttl : float or str, optional
        Seconds a cached value is trusted; after that it is read again. Default: config
        ``swarmstore.cache.ttl`` (null: forever).
    validate : bool, optional
        On every hit, ask the backing store for the key's version token (see
        ``version_token``) and refetch if it changed. Default: ``swarmstore.cache.validate``.
    admission_fraction : float, optional
        Values larger than this fraction of ``memory_bytes`` skip the RAM tier.
    namespace : str, optional
        Keeps this store's entries apart from other stores' in shared tiers. Default: a
        hash of ``store_identity(backing)``, equal in every process for the same store.
    memory : MemoryTier, optional
        A RAM tier shared with other stores (then ``memory_bytes`` is its bound).
    read_only : bool
        Refuse writes.

    Notes
    -----
    Writes and deletes go to ``backing`` first, then drop the key from every tier (and stop
    in-flight reads of it from filling the tiers), so nothing written or deleted through
    this store is ever served stale. Writes by *other* processes to ``backing`` are only
    seen after ``ttl`` or with ``validate``. Concurrent misses of one key (and byte range)
    in a process share one backing read (single flight). Whole values and each distinct
    byte range are cached; a whole value answers every range of its key. Absent keys are
    remembered in RAM too (zarr probes for them), under the same freshness rules.

    If the backing store fails, cached values (even expired ones) are served; others raise
    :class:`~swarmstore.errors.NodeUnavailable`. A failing disk tier is bypassed with a
    :class:`~swarmstore.errors.CacheWarning`. Thread- and asyncio-safe; pickles as its
    settings (a copy starts with empty RAM and reopens the same disk directory).

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

    def __init__(
        self,
        backing: Store,
        memory_bytes: int | str | None = None,
        disk: DiskLike = None,
        *,
        ttl: float | str | None = None,
        validate: bool | None = None,
        admission_fraction: float | None = None,
        namespace: str | None = None,
        memory: MemoryTier | None = None,
        read_only: bool = False,
        _shared: _Shared | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self.backing = backing
        self.memory_bytes = int(config.get_bytes("cache.memory-bytes", memory_bytes) or 0)
        self.ttl = config.get_seconds("cache.ttl", ttl)
        self.validate = bool(config.get("cache.validate") if validate is None else validate)
        self.admission_fraction = float(
            admission_fraction
            if admission_fraction is not None
            else config.get("cache.memory-admission-fraction")
        )
        self.namespace = namespace or xxhash.xxh3_64_hexdigest(store_identity(backing).encode())
        if _shared is None:
            if memory is None:
                memory = MemoryTier(self.memory_bytes, self.admission_fraction)
            _shared = _Shared(memory, _make_disk(disk))
        self._shared = _shared
        self.memory = _shared.memory
        self.memory_bytes = self.memory.max_bytes
        self.disk = _shared.disk
        self._prefix = self.namespace + ":"  # RAM keys, so stores may share a MemoryTier

    def _settings(self) -> dict[str, Any]:
        return {
            "backing": self.backing,
            "memory_bytes": self.memory_bytes,
            "disk": self.disk if self.disk is not None else False,
            "ttl": self.ttl,
            "validate": self.validate,
            "admission_fraction": self.admission_fraction,
            "namespace": self.namespace,
            "read_only": self.read_only,
        }

    def __getstate__(self) -> dict[str, Any]:
        return self._settings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def with_read_only(self, read_only: bool = False) -> TieredStore:
        # docstring inherited; the copy shares this store's tiers
        settings = self._settings()
        settings.update(backing=self.backing.with_read_only(read_only), read_only=read_only)
        return TieredStore(**settings, _shared=self._shared)

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
        disk = f" -> {self.disk!r}" if self.disk is not None else ""
        return f"TieredStore(memory {format_bytes(self.memory_bytes)}{disk} -> {self.backing!r})"

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

    async def _open(self) -> None:
        await super()._open()
        await self.backing._ensure_open()

    def flush(self) -> None:
        """Wait for background disk fills; flush the backing store if it can."""
        if self.disk is not None:
            self.disk.flush()
        backing_flush = getattr(self.backing, "flush", None)
        if callable(backing_flush):
            result = backing_flush()
            if inspect.isawaitable(result):  # ReplicatedStore.flush is async
                sync(result)

    def close(self) -> None:
        """Flush, close the disk tier's index and the backing store."""
        if self.disk is not None:
            self.disk.close()
        self.backing.close()
        super().close()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tier: hits, misses, bytes, evictions (and more); and backing-store reads."""
        sh = self._shared
        out = {"memory": sh.memory.stats()}
        if sh.disk is not None:
            out["disk"] = sh.disk.stats()
        out["backing"] = {
            "reads": sh.reads,
            "bytes": sh.read_bytes,
            "errors": sh.errors,
            "coalesced": sh.coalesced,
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
        span = span_of(byte_range)
        sh = self._shared
        entry = sh.memory.get(self._prefix + key, span)
        if entry is not None:
            if (self.ttl is None and not self.validate) or await self._fresh(key, entry):
                return None if entry.data is None else prototype.buffer.from_bytes(entry.data)
            sh.memory.discard(self._prefix + key)
        stale = entry
        if (
            sh.disk is not None
            and sh.disk_trusted
            and sh.disk.might_have(self.namespace, key, span)
        ):
            started = time.time_ns()
            # run_in_executor, not to_thread: a hit need not copy the context
            entry = await asyncio.get_running_loop().run_in_executor(
                None, sh.disk.read, self.namespace, key, span
            )
            if entry is not None:
                if await self._fresh(key, entry):
                    self._fill_memory(key, span, entry, started)
                    return None if entry.data is None else prototype.buffer.from_bytes(entry.data)
                stale = stale or entry
        return await self._fetch(key, span, byte_range, prototype, stale)

    async def _fresh(self, key: str, entry: Entry) -> bool:
        if self.ttl is not None and time.time() - entry.filled_at > self.ttl:
            return False
        if not self.validate:
            return True
        try:
            return await version_token(self.backing, key) == entry.token
        except Exception as e:
            logger.warning("Cannot validate %r (%s); serving the cached copy", key, e)
            return True

    async def _fetch(
        self,
        key: str,
        span: Span,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        stale: Entry | None,
    ) -> Buffer | None:
        sh = self._shared
        while True:
            with sh.lock:
                fut = sh.inflight.get((key, span))
                if fut is None:
                    fut = sh.inflight[(key, span)] = concurrent.futures.Future()
                    break
                sh.coalesced += 1
            try:
                data = await asyncio.shield(asyncio.wrap_future(fut))
            except _LeaderCancelled:
                continue
            return None if data is None else prototype.buffer.from_bytes(data)
        started = time.time_ns()
        try:
            token = await version_token(self.backing, key) if self.validate else None
            buf = await self.backing.get(key, prototype, byte_range)
            data = None if buf is None else _as_bytes(buf)
        except BaseException as e:
            self._forget(key, span, fut)
            if not isinstance(e, Exception):
                fut.set_exception(_LeaderCancelled())
                raise
            sh.errors += 1
            if stale is not None:
                sh.stale_served += 1
                logger.warning("Backing store failed reading %r (%s); serving cached copy", key, e)
                fut.set_result(stale.data)
                return None if stale.data is None else prototype.buffer.from_bytes(stale.data)
            err = self._unavailable(key, e)
            fut.set_exception(err)
            if err is e:
                raise
            raise err from e
        self._forget(key, span, fut)
        fut.set_result(data)
        sh.reads += 1
        entry = Entry(data, time.time(), token)
        self._fill_memory(key, span, entry, started)  # absent keys too: zarr probes them often
        sh.read_bytes += len(data) if data is not None else 0
        if sh.disk is not None and sh.disk_trusted:
            sh.disk.submit(
                self.namespace, key, span, data,
                started_ns=started, filled_at=entry.filled_at, token=token,
            )  # fmt: skip
        return buf

    def _fill_memory(self, key: str, span: Span, entry: Entry, started_ns: int) -> None:
        sh = self._shared
        if not sh.memory.admits(len(entry.data) if entry.data is not None else 0):
            sh.memory.rejected += 1
            return
        data = entry.data
        if isinstance(data, memoryview) and _view_overhead(data) > _VIEW_SLACK:
            data = bytes(data)  # a range of a larger file: do not pin the whole file in RAM
        with sh.lock:
            if not sh.invalidated_since(key, started_ns):
                sh.memory.put(self._prefix + key, span, Entry(data, entry.filled_at, entry.token))

    def _forget(self, key: str, span: Span, fut: concurrent.futures.Future[Any]) -> None:
        with self._shared.lock:
            if self._shared.inflight.get((key, span)) is fut:
                del self._shared.inflight[(key, span)]

    def _unavailable(self, key: str, e: Exception) -> Exception:
        if isinstance(e, SwarmError) or not isinstance(e, OSError):
            return e
        return NodeUnavailable(
            f"cannot read {key!r}: it is not cached and the backing store {self.backing!r} "
            f"failed ({type(e).__name__}: {e}); cached keys are still served"
        )

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    # -- writes: through to the backing store, then invalidate ---------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        if not self._is_open:
            await self._ensure_open()
        try:
            await self.backing.set(key, value)
        finally:
            await self._invalidate(key)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        try:
            await self.backing.set_if_not_exists(key, value)
        finally:
            await self._invalidate(key)

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()
        try:
            await self.backing.delete(key)
        finally:
            await self._invalidate(key)

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        self._check_writable()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            await self.backing.delete_dir(prefix)
        finally:
            await self._invalidate(prefix, is_prefix=True)

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        try:
            await self.backing.clear()
        finally:
            await self._invalidate("", is_prefix=True)

    async def _invalidate(self, key: str, is_prefix: bool = False) -> None:
        sh = self._shared
        now = time.time_ns()
        with sh.lock:
            if is_prefix:
                sh.prefixes[key] = now
                sh.memory.discard_prefix(self._prefix + key)
                doomed = [k for k in sh.inflight if k[0].startswith(key)]
            else:
                sh.invalidated[key] = now
                sh.memory.discard(self._prefix + key)
                doomed = [k for k in sh.inflight if k[0] == key]
            for k in doomed:
                del sh.inflight[k]
            if len(sh.invalidated) > 65536:
                cutoff = now - _KEEP_INVALIDATIONS_NS
                sh.invalidated = {k: t for k, t in sh.invalidated.items() if t >= cutoff}
        if sh.disk is None or not sh.disk_trusted:
            return
        try:
            if is_prefix:
                await asyncio.to_thread(sh.disk.invalidate_prefix, self.namespace, key)
            else:
                await asyncio.to_thread(sh.disk.invalidate, self.namespace, key)
        except Exception as e:
            # The disk may still hold the old value: never read from it again.
            sh.disk_trusted = False
            msg = f"disk cache {sh.disk.path} could not drop {key!r} ({e}); disk tier disabled"
            logger.warning("%s", msg)
            warnings.warn(msg, CacheWarning, stacklevel=3)

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


def _as_bytes(buf: Buffer) -> bytes:
    """The bytes of ``buf``, without a copy when it is a view of a whole bytes object.

    LocalStore and FsspecStore hand zarr ``np.frombuffer(bytes)`` views; caching the bytes
    object they came from saves copying every chunk on the cold path.
    """
    try:
        array = buf.as_numpy_array()
    except Exception:
        return buf.to_bytes()
    base = array.base
    if isinstance(base, bytes) and len(base) == array.nbytes and array.flags.c_contiguous:
        return base
    return array.tobytes()


def _view_overhead(view: memoryview) -> int:
    """Bytes a view keeps alive beyond its own (a disk hit's view also holds the header)."""
    try:
        return len(view.obj) - view.nbytes  # type: ignore[arg-type]
    except TypeError:
        return 1 << 62


def _make_disk(disk: DiskLike) -> DiskTier | None:
    if disk is False:
        return None
    if isinstance(disk, DiskTier):
        return disk
    if disk is None:
        disk = config.get("cache.disk-dir")
        if disk is None:
            return None
    return DiskTier(disk)
