"""The disk tier's invalidations: generation files first, the index's rows after.

:class:`Invalidations` is the part of :class:`~swarmstore.cache._diskengine.Engine` that
voids keys and prefixes. The generation files (``_diskgens``) and the files' names decide
what is stale, never the index or a clock, so an invalidation holds whatever state the
index is in; the rows are dropped after, and an index that cannot be used only costs the
bound's accuracy until a caller rebuilds it. Deferred invalidations run in the fill thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import swarmstore.cache._diskformat as fmt
from swarmstore.cache._diskhost import O_DIR as _O_DIR
from swarmstore.cache._diskhost import at
from swarmstore.cache._disklocks import DirLock

__all__ = ["Invalidations"]


class Invalidations:
    """Mixed into the disk engine: it brings the directory, its lock, index and fills."""

    def invalidate(self, ns: str, key: str, prefix: bool, *, foreground: bool = True) -> None:
        """Void the tickets of ``key`` (or prefix) taken before now and drop its files.

        The generation files and the files' names decide, not the index, so this holds
        whatever state the index is in. Raises OSError if the directory cannot be used.
        """
        if self.ensure_open(foreground=foreground):
            with self.held() as lock:
                self._invalidate_in(lock.fd, self.tmp_fd, ns, key, prefix)
                at("bumped")
                with contextlib.suppress(OSError, sqlite3.Error):
                    self._drop_rows(ns, key, prefix, foreground=foreground)
            return
        if self.state == "gone" or not os.path.isdir(self.data):
            return  # the directory is gone: nothing of it can be read
        # no index here, but other processes may read the files: lock and drop them anyway
        lock = DirLock(self.data)
        try:
            tmp_fd = os.open(self.path / "tmp", _O_DIR)
            try:
                with lock.held():
                    self._invalidate_in(lock.fd, tmp_fd, ns, key, prefix)
            finally:
                os.close(tmp_fd)
        finally:
            lock.close()

    def _invalidate_in(self, data_fd: int, tmp_fd: int, ns: str, key: str, prefix: bool) -> None:
        if prefix:
            self.gens.bump_prefix(data_fd, tmp_fd, ns, key)
        else:
            self.gens.void(data_fd, tmp_fd, fmt.key_stem(ns, key))

    def _drop_rows(self, ns: str, key: str, prefix: bool, *, foreground: bool) -> None:
        """The index's side of an invalidation (held lock): unlink what it lists, drop rows.

        The files are gone already (by name): an index the fill thread may not use keeps
        rows too many, which only costs the bound's accuracy until a caller rebuilds it.
        """
        self._usable_index(foreground=foreground)
        try:
            with self.index.transaction() as db:
                rows = self.index.rows_of(db, ns, key, prefix=prefix)
                for name, _ in rows:  # files first, rows after
                    self.unlink(name)
                self.index.delete(db, rows)
        except sqlite3.DatabaseError as e:
            self._index_failed(e, foreground=foreground)

    def defer(self, ns: str, key: str, prefix: bool) -> None:
        """Invalidate soon, in the fill thread; reads of the key miss until it is done."""
        self.deferred.add(ns, key, prefix)
        self.fills.want_housekeeping()

    def _invalidate_later(self, ns: str, key: str, prefix: bool) -> None:
        self.invalidate(ns, key, prefix, foreground=False)
