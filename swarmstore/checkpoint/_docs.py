"""Small documents (refs, markers, locks, snapshots, pieces): read and written cheaply.

A commit moves a handful of small documents. Over zarr's ``LocalStore`` every async
method hops to a worker thread for sub-millisecond file work, and on a machine whose
CPUs are busy each hop costs more than the work (the event loop waits for a thread and
the GIL). For such a store (:func:`inline_io`) these helpers do the file work on the
event loop itself, through the store's own sync surface (``get_sync``, ``set_sync``,
``delete_sync``), as zarr's sync codec pipeline does, and list the small folders
(``refs/``, ``snapshots/``) the way ``LocalStore.list_prefix`` does; every other store
is called as usual. Chunk objects go through here only when small (:func:`small_inline`:
at most :data:`INLINE_BYTES`); larger ones are read and written on worker threads,
concurrently.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.checkpoint._caps import get_whole

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

__all__ = [
    "INLINE_BYTES",
    "create_doc",
    "delete_doc",
    "get_doc",
    "inline_io",
    "list_keys",
    "put_doc",
    "small_inline",
]

#: Chunk objects up to this size of an :func:`inline_io` store are read and written on
#: the event loop (a 64 KiB local file write is cheaper than the thread hop before it).
INLINE_BYTES = 64 << 10


def inline_io(store: Store) -> bool:
    """Whether small documents of ``store`` are read and written on the event loop."""
    return isinstance(store, LocalStore)


def small_inline(store: Store, nbytes: int) -> bool:
    """Whether an object of ``nbytes`` in ``store`` is read and written on the event loop."""
    return nbytes <= INLINE_BYTES and inline_io(store)


async def get_doc(store: Store, key: str) -> Buffer | None:
    """The whole document ``key``, or None when absent."""
    if inline_io(store):
        return store.get_sync(key, prototype=default_buffer_prototype())  # type: ignore[attr-defined]
    return await get_whole(store, key)


async def put_doc(store: Store, key: str, data: bytes) -> None:
    """Write ``key`` (whole or nothing: the store's own atomic put)."""
    buf = default_buffer_prototype().buffer.from_bytes(data)
    if inline_io(store):
        store.set_sync(key, buf)  # type: ignore[attr-defined]
    else:
        await store.set(key, buf)


async def delete_doc(store: Store, key: str) -> None:
    """Delete ``key`` (absent: nothing to do)."""
    if inline_io(store):
        store.delete_sync(key)  # type: ignore[attr-defined]
    else:
        await store.delete(key)


async def list_keys(store: Store, prefix: str) -> list[str]:
    """``store.list_prefix(prefix)`` as a list (a ``LocalStore``: walked on the loop, as
    it lists: every file under the directory ``prefix`` names)."""
    if not inline_io(store):
        return [k async for k in store.list_prefix(prefix)]
    return _walk(str(store.root), prefix.rstrip("/"))  # type: ignore[attr-defined]


def _walk(root: str, prefix: str) -> list[str]:
    out = []
    for folder, _, files in os.walk(os.path.join(root, prefix)):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        out.extend(f"{rel}/{name}" if rel != "." else name for name in files)
    return out


def create_doc(store: LocalStore, key: str, data: bytes) -> None:
    """Create ``key`` in a ``LocalStore`` unless it exists (``FileExistsError``): a
    temporary file, then ``os.link``, which fails if the name exists, as zarr's own
    exclusive write does, but with the answer kept."""
    store._check_writable()
    path = store.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
