"""The commit: one conditional put of a manifest, as atomic as the store allows.

``put_if_absent`` returns True when this call created the key and False when the key
already held other bytes. How strong that is depends on the store, and
:func:`commit_guarantee` says which case applies:

- ``FsspecStore`` on s3fs: ``PutObject`` with ``IfNoneMatch="*"``; S3 (and moto) refuse
  the second writer with 412, so exactly one writer of a key wins. Atomic.
- ``LocalStore``: zarr writes a temporary file and ``os.link``\\s it to the final name,
  which fails if the name exists. Atomic on POSIX filesystems (not on every NFS).
- ``MemoryStore``: ``dict.setdefault`` under the GIL. Atomic within one process.
- ``ManifestStore``: claims the key before its first ``await``. Atomic within one loop.
- ``TieredStore``: commits go to its backing store (caches are looked through), so
  the guarantee is the backing store's.
- ``ReplicatedStore``: an atomic conditional create on every replica (the above per
  backend); a writer wins with a write quorum (a majority), which at most one writer
  can gather. Atomic.
- Anything else (wrapper stores): the store's own ``set_if_not_exists``. zarr's default
  is ``exists`` then ``set`` (racy between two writers), so these are
  ``"store-defined"``.

A put is always whole-or-nothing against a crash (temp file + rename, one PUT), so a
kill -9 never leaves a partial manifest; the conditional part only matters when two
writers commit the same step at once. The read-back after ``set_if_not_exists`` detects
a lost race whenever the store's conditional put is atomic (each manifest carries a
unique id, so equal bytes mean this writer's bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from swarmstore.checkpoint._store import ManifestStore, control_store

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["commit_guarantee", "put_if_absent"]

type Guarantee = Literal["atomic", "atomic-in-process", "store-defined"]


def _is_s3(store: Store) -> bool:
    if not isinstance(store, FsspecStore):
        return False
    protocol = store.fs.protocol
    return "s3" in (protocol if isinstance(protocol, tuple | list) else (protocol,))


def commit_guarantee(store: Store) -> Guarantee:
    """How atomic a manifest commit on ``store`` is against a concurrent writer.

    Caches (``TieredStore``) are looked through: commits go to the store beneath.
    """
    store = control_store(store)
    from swarmstore.storage import ReplicatedStore

    if _is_s3(store) or isinstance(store, LocalStore | ReplicatedStore):
        return "atomic"
    if isinstance(store, MemoryStore | ManifestStore):
        return "atomic-in-process"
    return "store-defined"


async def put_if_absent(store: Store, key: str, data: bytes) -> bool:
    """Create ``key`` holding ``data`` unless it exists; True if this call created it."""
    buf = default_buffer_prototype().buffer.from_bytes(data)
    if _is_s3(store):
        store._check_writable()
        path = f"{store.path.rstrip('/')}/{key}" if store.path else key
        try:
            # one PutObject whatever the size (s3fs switches to an unconditional
            # multipart upload past 2 * chunksize)
            await store.fs._pipe_file(path, data, mode="create", chunksize=len(data) + 1)
        except FileExistsError:
            return False
        return True
    await store.set_if_not_exists(key, buf)
    held = await store.get(key, default_buffer_prototype())
    return held is not None and held.to_bytes() == data
