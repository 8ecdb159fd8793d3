"""TieredStore's write path, in async and sync forms: the backing store first, then every
tier drops the key, lowest first.

A write or delete goes to the backing store, then each tier evicts the key (or prefix),
from the lowest tier up, so an upper tier can never refill from a lower one that still
holds the old value. Evicting moves the tier's generation counter on (``_tier``): a read
that took its ticket before the write cannot fill the old value back in. In-flight reads
of the key are forgotten (``_flight``), and on a Dask worker with the plugin the write is
announced to every worker (``_coherence``). A tier that fails to evict is distrusted: it is
never read again by this store.

The sync forms (zarr's ``set_sync``/``delete_sync``) use the backing store's own sync
method when it has one (``_syncio``), else run its coroutine.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import swarmstore.cache._coherence as _coherence
import swarmstore.cache._syncio as _syncio
from swarmstore.errors import CacheWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

    from swarmstore.cache._disk import DiskTier
    from swarmstore.cache._tier import Tier

__all__ = ["WritePath"]

logger = logging.getLogger("swarmstore.cache._tiered")


class WritePath:
    """The writes of :class:`~swarmstore.cache.TieredStore` (see the module docstring)."""

    backing: Store
    namespace: str
    coherent: bool
    _shared: Any
    _announce: Callable[..., Any]
    _is_open: bool

    if TYPE_CHECKING:  # provided by the store

        @property
        def disk(self) -> DiskTier | None: ...

        def _check_writable(self) -> None: ...

        async def _ensure_open(self) -> None: ...

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        if not self._is_open:
            await self._ensure_open()
        try:
            await self.backing.set(key, value)
        finally:
            await self._invalidate(key)

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set` from sync code (the backing store's sync path when it has one)."""
        self._check_writable()
        try:
            if _syncio.supports_sync_io(self.backing):
                self.backing.set_sync(key, value)  # type: ignore[attr-defined]
            else:
                _syncio.run(self.backing.set(key, value))
        finally:
            self._invalidate_sync(key)

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

    def delete_sync(self, key: str) -> None:
        """:meth:`delete` from sync code."""
        self._check_writable()
        try:
            if _syncio.supports_sync_io(self.backing):
                self.backing.delete_sync(key)  # type: ignore[attr-defined]
            else:
                _syncio.run(self.backing.delete(key))
        finally:
            self._invalidate_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        self._check_writable()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            await self.backing.delete_dir(prefix)
        finally:
            await self._invalidate(prefix, prefix=True)

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        try:
            await self.backing.clear()
        finally:
            await self._invalidate("", prefix=True)

    async def _invalidate(self, key: str, *, prefix: bool = False) -> None:
        sh = self._shared
        for tier in reversed(sh.tiers):  # lowest first: an upper tier cannot refill from it
            try:  # distrusted tiers too: other processes may still read a shared one
                await tier.evict(self.namespace, key, prefix=prefix)
            except Exception as e:
                self._distrust(tier, key, e)
        sh.flights.drop(key, prefix=prefix)
        if self.coherent:
            await _coherence.announce(self._announce, self.namespace, key, prefix, self.disk)

    def _invalidate_sync(self, key: str, *, prefix: bool = False) -> None:
        sh = self._shared
        for tier in reversed(sh.tiers):
            try:
                tier.evict_sync(self.namespace, key, prefix=prefix)
            except Exception as e:
                self._distrust(tier, key, e)
        sh.flights.drop(key, prefix=prefix)
        if self.coherent:
            _coherence.announce_sync(self._announce, self.namespace, key, prefix, self.disk)

    def _distrust(self, tier: Tier, key: str, e: Exception) -> None:
        # The tier may still hold the old value: never read from it again.
        if tier.name in self._shared.distrusted:
            return
        self._shared.distrusted.add(tier.name)
        msg = f"{tier!r} could not drop {key!r} ({e}); that tier is disabled for this store"
        logger.warning("%s", msg)
        warnings.warn(msg, CacheWarning, stacklevel=4)

    def drop_remote(self, key: str, *, prefix: bool = False) -> None:
        """Another worker wrote ``key``: drop it here without waiting (see ``_coherence``)."""
        self._shared.flights.drop(key, prefix=prefix)
