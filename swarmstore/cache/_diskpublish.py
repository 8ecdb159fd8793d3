"""Publishing fills: reserve room, write temp files, then make them visible in one step.

1. *Reserve* (directory lock, one index transaction): the batch's sizes must fit the
   bound (``_diskevict``); what does not fit is cut; the rest becomes this process's
   reservation, so temp files being written count against the bound.
2. *Stage* (no lock): each value to its own temp file in ``tmp/``, fsynced if asked.
3. *Commit* (directory lock): each fill whose ticket is still current (``_diskgens``)
   gets its index row, the transaction commits, and only then are the temp files renamed
   into place, the lock still held: an invalidation cannot run between the check and the
   rename, and every published file has its row (the bound sees it).

A fill that is dropped (stale ticket, cut, a failure) releases its claim, so a process
waiting for it fetches the value itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Any

import swarmstore.cache._diskformat as fmt
from swarmstore.cache._diskgens import subdir
from swarmstore.cache._diskhost import Gone, at

if TYPE_CHECKING:
    from swarmstore.cache._diskfill import Fill
    from swarmstore.cache._diskhost import Host

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

type Staged = tuple["Fill", str, int]  # fill, temp file name, size


class Publisher:
    """The fill path of one engine (``_diskengine.Engine``, seen as a ``_diskhost.Host``)."""

    def __init__(self, engine: Host) -> None:
        self.e = engine
        self._seq = itertools.count()
        self.writes = self.cut = self.errors = 0

    def temp_name(self) -> str:
        owner = self.e.owner
        token = owner.token if owner is not None else f"detached-{os.getpid()}"
        return f"{token}.{next(self._seq)}"

    def publish(self, batch: list[Fill], *, foreground: bool = False) -> None:
        """Write ``batch`` and publish what is still fresh.

        ``foreground``: a caller's own write, which may reopen a lost index; the fill
        thread's fills are dropped instead while the directory or its index is not the
        one this process opened (it may be being removed: nothing is created in it).
        """
        e = self.e
        try:
            if not e.ensure_open(foreground=foreground):
                return
            items = self._reserve(batch, foreground)
            if not items:
                return
            try:
                self._commit(self._stage(items), foreground)
            except BaseException:
                self._clear_reservation(foreground)
                raise
        except OSError as err:  # Gone included: the directory was removed
            self._failed(err)
        except sqlite3.Error as err:
            self._failed(err)

    def _failed(self, err: Exception) -> None:
        e = self.e
        gone = isinstance(err, Gone) or e.index_trouble is not None
        if gone or not e.ensure_open(foreground=False):
            logger.info("disk cache %s or its index is gone (%s); fills dropped", e.path, err)
            return
        self.errors += 1
        self.e.warn(f"disk cache writes to {self.e.path} failed ({err})")

    def _reserve(
        self, batch: list[Fill], foreground: bool
    ) -> list[tuple[Fill, tuple[Any, ...], int]]:
        e = self.e
        encoded = []
        for fill in batch:
            mark = fill.ticket.prefixes if fill.ticket is not None else ""
            parts = fmt.encode(
                fill.ns, fill.key, fill.span, fill.data, fill.filled_at, fill.token, mark
            )
            encoded.append((fill, parts, sum(len(p) for p in parts)))
        assert e.space is not None
        with e.locked(foreground=foreground) as db:
            fits = e.space.fit(db, [size for _, _, size in encoded])
        self.cut += fits.count(False)
        at("reserved")
        return [item for item, ok in zip(encoded, fits, strict=True) if ok]

    def _stage(self, items: list[tuple[Fill, tuple[Any, ...], int]]) -> list[Staged]:
        """Write each value to a temp file; (fill, temp name, size) of those written."""
        staged: list[Staged] = []
        fds = []
        try:
            for fill, parts, size in items:
                tmp = self.temp_name()
                fd = os.open(tmp, _O_TMP, 0o644, dir_fd=self.e.tmp_fd)
                fds.append(fd)
                staged.append((fill, tmp, size))
                for part in parts:
                    if os.write(fd, part) != len(part):
                        raise OSError("short write to a disk cache temp file")
            if self.e.fsync:
                for fd in fds:
                    os.fsync(fd)
        except BaseException:
            self._discard(staged)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        at("staged")
        return staged

    def _commit(self, staged: list[Staged], foreground: bool) -> None:
        """Rows first (committed), then renames, under one hold of the directory lock."""
        e = self.e
        assert e.owner is not None
        fresh: dict[str, Staged] = {}  # name -> staged; the last fill of a name wins
        try:
            # renamed, then the dropped fills' temp files deleted, the lock still held: their
            # reservation ends with this transaction, so they must be gone before another
            # process can reserve that room (the bound holds for every holder of the lock)
            after = [
                lambda: self._rename_all(fresh, foreground),
                lambda: self._discard([s for s in staged if not s[0].done]),
            ]
            with e.locked(after=after, foreground=foreground) as db:
                for item in staged:
                    fill = item[0]
                    stem = fmt.key_stem(fill.ns, fill.key)
                    if fill.ticket is not None and e.gens.current(
                        stem, fill.ns, fill.key, fill.ticket
                    ):
                        fresh[fmt.name_of(fill.ns, fill.key, fill.span)] = item
                rows = [(n, f.ns, f.key, size) for n, (f, _, size) in fresh.items()]
                e.index.insert(db, rows)
                e.index.set_reservation(db, e.owner.token, 0)
                at("inserted")
        finally:
            self._discard([s for s in staged if not s[0].done])  # dropped, or not renamed

    def _rename_all(self, fresh: dict[str, Staged], foreground: bool) -> None:
        at("committed")
        if not foreground and not self.e.index.is_current():
            raise Gone(f"disk cache index {self.e.index.path} was removed; fills dropped")
        for name, (fill, tmp, _) in fresh.items():
            self._rename(tmp, name, foreground)
            fill.done = True
            fill.release()
            self.writes += 1
            at("renamed")

    def _rename(self, tmp: str, name: str, foreground: bool) -> None:
        """Move a temp file into place. The fill thread never creates the subdirectory
        (the ticket did, on the caller's thread): one missing there was removed, maybe
        with the whole directory, which must not get a subdirectory back."""
        e = self.e
        assert e.lock is not None
        sub = subdir(name)
        try:
            os.replace(tmp, f"{sub}/{name}", src_dir_fd=e.tmp_fd, dst_dir_fd=e.lock.fd)
        except FileNotFoundError:
            if not foreground:
                raise Gone(f"disk cache subdirectory {sub} was removed; fills dropped") from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, dir_fd=e.lock.fd)
            os.replace(tmp, f"{sub}/{name}", src_dir_fd=e.tmp_fd, dst_dir_fd=e.lock.fd)

    def _discard(self, staged: list[Staged]) -> None:
        for _, tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.e.tmp_fd)

    def _clear_reservation(self, foreground: bool) -> None:
        e = self.e
        if e.owner is None or e.state != "open":
            return
        with contextlib.suppress(OSError, sqlite3.Error), e.locked(foreground=foreground) as db:
            e.index.set_reservation(db, e.owner.token, 0)
