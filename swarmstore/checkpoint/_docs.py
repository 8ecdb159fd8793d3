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
concurrently. :class:`LocalFiles` writes those small chunk objects for a fraction of
``LocalStore.set_sync``'s cost per file (a full save of 100k small chunks is mostly
that cost otherwise).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from typing import TYPE_CHECKING, Any

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.checkpoint._caps import get_whole

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

__all__ = [
    "INLINE_BYTES",
    "LocalFiles",
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


class LocalFiles:
    """Whole-or-nothing writes of files into a ``LocalStore``'s directory, done cheaply.

    The same protocol as ``LocalStore.set_sync`` (a temporary file beside the target,
    then a rename; no fsync, as zarr's), in plain ``os`` calls on strings, with each
    folder made once per writer instead of before every file, and temporary names from
    a counter instead of a ``uuid4`` each: about a third of the cost per small file.
    Safe to call from several threads at once.
    A folder removed since it was made (``delete_dir``) is made again.
    """

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self._root = os.fspath(store.root)
        self._made: set[str] = set()
        self._tag = uuid.uuid4().hex[:12]
        self._count = itertools.count()  # next() is atomic: writers on many threads

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store}  # a copy elsewhere makes its own folders and names

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"])  # type: ignore[misc]

    def put(self, key: str, data: Any) -> None:
        """Write ``data`` (anything with the buffer protocol) as ``key``."""
        self.store._check_writable()
        path = f"{self._root}/{key}"
        tmp = f"{path}.{self._tag}{next(self._count)}.partial"
        try:
            fd = self._open(tmp)
        except FileNotFoundError:
            self._made.discard(os.path.dirname(tmp))
            fd = self._open(tmp)
        try:
            try:
                _write_all(fd, memoryview(data).cast("B"))
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _open(self, tmp: str) -> int:
        folder = os.path.dirname(tmp)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        return os.open(tmp, flags, 0o666)  # as open(..., "wb"): the umask applies


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]
