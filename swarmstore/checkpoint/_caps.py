"""What the checkpoint asks of a store, by capability, never by swarmstore type.

- :func:`as_store`: a store for what a user named (a store, a path, a URL); anything
  else is refused with ``TypeError`` at once, not deep inside the first save.
- :func:`control_store`: where commits, refs, markers and listings go. A caching store
  announces itself with ``is_cache = True`` and names what it caches as ``backing``; the
  checkpoint looks through it so every process sees the same committed state.
- :func:`atomic_create`: whether ``set_if_not_exists`` is an atomic create across
  writers. A store announces it with ``supports_atomic_create = True`` (ReplicatedStore
  does: a quorum of atomic creates). zarr's own stores are known here: ``LocalStore``
  (``os.link``), ``FsspecStore`` on S3 (``If-None-Match: *``), ``ObjectStore`` on
  obstore's S3, GCS, Azure and local stores (``PutMode.Create``: a conditional request,
  or an exclusive create), ``MemoryStore`` (in-process only).
- :func:`forget_listings`: drop fsspec's cached listings (s3fs answers existence from
  them), so a key another process created since is not reported missing.
- :func:`whole_request` / :func:`get_whole`: read a whole object in one request. s3fs
  asks an object's size (a ``HeadObject``) before every unranged read, to split large
  objects into ranged reads; an open range from byte 0 is one ``GetObject``. Every
  checkpoint read (objects, pieces, snapshots, refs, markers) goes through these.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from zarr.abc.store import OffsetByteRequest, Store
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, MemoryStore, ObjectStore, WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = [
    "Guarantee",
    "as_store",
    "atomic_create",
    "control_store",
    "forget_listings",
    "get_whole",
    "is_s3",
    "obstore_of",
    "whole_request",
]

type Guarantee = Literal["atomic", "atomic-in-process", "store-defined"]


def as_store(where: Any) -> Store:
    """``where`` as a zarr store: a store as it is; a path or ``file://`` URL as a
    ``LocalStore``; ``memory://`` as a fresh ``MemoryStore``; any other URL as an
    ``FsspecStore`` (``s3://``, ``gs://``...: its fsspec filesystem must be installed)."""
    if isinstance(where, Store):
        return where
    if not isinstance(where, str | os.PathLike):
        raise TypeError(
            "a checkpoint store is a zarr Store, a path or a URL; "
            f"got {type(where).__name__}: {where!r}"
        )
    url = os.fspath(where)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a checkpoint store path or URL must be a non-empty string: {where!r}")
    if url == "memory://":
        return MemoryStore()
    if "://" not in url or url.startswith("file://"):
        return LocalStore(url.removeprefix("file://"))
    try:
        return FsspecStore.from_url(url)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot open the checkpoint store {url}: {e}") from None


def _is_cache(store: Store) -> bool:
    """A cache in front of another store announces it (``is_cache``, ``backing``), as
    swarmstore's TieredStore does: never recognised by type or by where it lives."""
    return bool(getattr(store, "is_cache", False)) and hasattr(store, "backing")


def control_store(store: Store) -> Store:
    """``store`` without the caches above it: where commits and listings must go.

    A cache may answer from RAM or disk (absent keys included) what another process has
    changed since; refs, markers and locks are read and written on the store beneath.
    Objects and pieces, immutable by construction, are still read through the cache.
    """
    while _is_cache(store):
        store = store.backing  # type: ignore[attr-defined]
    return store


def is_s3(store: Store) -> bool:
    """An ``FsspecStore`` over s3fs (commits use S3's conditional ``PutObject``)."""
    if not isinstance(store, FsspecStore):
        return False
    protocol = store.fs.protocol
    return "s3" in (protocol if isinstance(protocol, tuple | list) else (protocol,))


#: obstore stores whose ``PutMode.Create`` is exclusive across processes.
_OBSTORE_ATOMIC = frozenset({"S3Store", "GCSStore", "AzureStore", "LocalStore"})


def obstore_of(store: Store) -> tuple[Any, bool] | None:
    """For zarr's ``ObjectStore``: the obstore store inside, and whether its create is
    exclusive across processes (True) or only within one (its ``MemoryStore``)."""
    if not isinstance(store, ObjectStore):
        return None
    inner = store.store
    name = type(inner).__name__
    return (inner, True) if name in _OBSTORE_ATOMIC else (inner, False)


def atomic_create(store: Store) -> Guarantee:
    """How atomic ``set_if_not_exists`` on ``store`` is against a concurrent writer."""
    store = control_store(store)
    if getattr(store, "supports_atomic_create", False) or is_s3(store):
        return "atomic"
    if isinstance(store, LocalStore):
        return "atomic"
    inner = obstore_of(store)
    if inner is not None:
        return "atomic" if inner[1] else "atomic-in-process"
    if isinstance(store, MemoryStore) or getattr(store, "atomic_in_process", False):
        return "atomic-in-process"
    return "store-defined"


def forget_listings(store: Store) -> bool:
    """Drop fsspec's cached directory listings under ``store``; True if it had any cache.

    s3fs answers ``_info`` (and so the size probe in ``_cat_file``) from cached listings:
    once a prefix was listed, a key another process created since reads as missing.
    Checkpoints are shared between processes, so each operation starts from fresh
    listings, and a missing object is retried once after forgetting them.
    """
    while isinstance(store, WrapperStore):
        store = store._store
    fs = getattr(store, "fs", None)
    if fs is None or not hasattr(fs, "invalidate_cache"):
        return False
    fs.invalidate_cache()
    return True


#: One request for the whole object, without the size probe (see the module docstring).
_FROM_START = OffsetByteRequest(0)


def whole_request(store: Store) -> ByteRequest | None:
    """The byte request that reads a whole object of ``store`` in one request.

    ``OffsetByteRequest(0)`` on S3 through s3fs, whose unranged read costs a
    ``HeadObject`` first; None (an ordinary read) on every other store.
    """
    return _FROM_START if is_s3(store) else None


async def get_whole(
    store: Store, key: str, prototype: BufferPrototype | None = None
) -> Buffer | None:
    """``store.get(key)`` of the whole value, in one request where the store allows it."""
    proto = prototype or default_buffer_prototype()
    return await store.get(key, proto, whole_request(store))
