"""Who a backing store is (to share caches), and what version of a key it holds (validation)."""

from __future__ import annotations

import asyncio
import os
import pickle
from typing import TYPE_CHECKING

import xxhash
from zarr.storage import FsspecStore, LocalStore, WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["store_identity", "version_token"]


def store_identity(store: Store) -> str:
    """A text that is equal for two store objects exactly when they hold the same data.

    Used to give every task on a worker the same cache for "the same" backing store (each
    task unpickles its own copy of the store object), and to keep two stores apart in a
    shared cache directory. A store may decide for itself with a ``cache_identity()``
    method; zarr's stores are recognised; anything else is named by its pickle.
    """
    hook = getattr(store, "cache_identity", None)
    if callable(hook):
        return str(hook())
    if isinstance(store, FsspecStore):
        opts = store.fs.storage_options
        endpoint = opts.get("endpoint_url") or opts.get("client_kwargs", {}).get("endpoint_url")
        protocol = store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, tuple) else protocol
        return f"{protocol}://{store.path}@{endpoint or ''}"
    if isinstance(store, LocalStore):
        return str(store)
    if isinstance(store, WrapperStore):
        return f"{type(store).__name__}({store_identity(store._store)})"
    text = str(store)
    if " at 0x" not in text:
        return f"{type(store).__name__}:{text}"
    try:
        return f"{type(store).__name__}:{xxhash.xxh3_64_hexdigest(pickle.dumps(store))}"
    except Exception:  # an unpicklable store can only be shared by the object itself
        return f"{type(store).__name__}@{id(store):x}"


async def version_token(store: Store, key: str) -> str | None:
    """A text that changes when the value under ``key`` changes (None: the key is absent).

    A store may provide ``async cache_token(key)`` (a checksum, an ETag, a generation).
    Otherwise: a local file's mtime and size; an fsspec object's ETag (S3) or mtime and
    size; for any other store its size, which misses same-size rewrites, so prefer a TTL
    or a ``cache_token`` method there.
    """
    hook = getattr(store, "cache_token", None)
    if callable(hook):
        token = await hook(key)
        return None if token is None else str(token)
    inner = store
    while isinstance(inner, WrapperStore):
        inner = inner._store
    if isinstance(inner, LocalStore):
        try:
            st = await asyncio.to_thread(os.stat, inner.root / key)
        except FileNotFoundError:
            return None
        return f"file:{st.st_mtime_ns}:{st.st_size}"
    if isinstance(inner, FsspecStore):
        path = f"{inner.path.rstrip('/')}/{key}"
        inner.fs.invalidate_cache(path)
        try:
            info = await inner.fs._info(path)
        except FileNotFoundError:
            return None
        etag = info.get("ETag") or info.get("etag")
        if etag:
            return f"etag:{etag}"
        return f"fs:{info.get('LastModified') or info.get('mtime')}:{info.get('size')}"
    try:
        return f"size:{await store.getsize(key)}"
    except FileNotFoundError:
        return None
