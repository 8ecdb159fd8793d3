"""The disk tier's machinery: open and restart, read, invalidate, housekeeping.

:class:`Engine` is everything a :class:`~swarmstore.cache.DiskTier` does, kept apart from
it so the fill thread and the garbage-collection finalizer reference the engine, never
the tier. Directory layout::

    <path>/index.sqlite3     sizes, access order, reservations (``_diskindex``)
    <path>/data/xxx/<name>   one file per cached value (``_diskformat``)
    <path>/data/xxx/_gen     generations of the keys of that subdirectory (``_diskgens``)
    <path>/data/_prefixes    prefix invalidations (``_diskgens``)
    <path>/tmp/<owner>.<n>   fills being written (counted against the bound)
    <path>/owners/<owner>    liveness locks of the processes using the directory
    <path>/claims/<name>     single-flight claims (``_disklocks``)

Mutations hold the directory lock and first check that the directory is still the one
this process opened: a deleted cache directory stops this process's fills and is only
re-created by a foreground call, with a :class:`~swarmstore.errors.CacheWarning`. Files
are created, renamed and unlinked relative to the directory fds, so nothing is ever
written into a directory that was deleted meanwhile.

The fill thread opens, creates and rebuilds nothing (issue 23): ``rmtree`` lists a
directory, removes what it listed, then the directory, so anything added meanwhile makes
the removal fail and leaves the directory behind. It writes only while the directory, its
``tmp`` and its index are the ones opened, and renames into subdirectories that exist (a
ticket, taken on a caller's thread before the fetch, creates the key's). A replaced index
(deleted, or another file) or a failing one stops its fills; a caller's next call reopens
it (rebuilt from the files when it is new) or rebuilds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from typing import TYPE_CHECKING

import swarmstore.cache._diskformat as fmt
from swarmstore import _clock
from swarmstore.cache._diskdefer import Deferred
from swarmstore.cache._diskevict import Space
from swarmstore.cache._diskfill import FillQueue
from swarmstore.cache._diskgens import Gens, Ticket, subdir
from swarmstore.cache._diskhost import HOOKS, Gone, Notices
from swarmstore.cache._diskhost import O_DIR as _O_DIR
from swarmstore.cache._diskindex import Index
from swarmstore.cache._diskinval import Invalidations
from swarmstore.cache._disklocks import Claims, DirLock, Owner
from swarmstore.cache._diskpublish import Publisher
from swarmstore.cache._diskscan import scan
from swarmstore.cache._span import WHOLE, Span
from swarmstore.cache._tier import Entry

if TYPE_CHECKING:
    import pathlib
    from collections.abc import Callable, Iterator

__all__ = ["HOOKS", "Engine", "Gone"]

logger = logging.getLogger(__name__)

_HOUSEKEEPING_EVERY = 1.0  # seconds between access-time writes and dead-owner sweeps
_RETRY_BROKEN = 5.0  # seconds before a tier that could not open tries again


class Engine(Invalidations, Notices):
    """The state and work of one DiskTier instance (one "process" of the directory)."""

    def __init__(self, path: pathlib.Path, max_bytes: int, fsync: bool, pending: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.data = str(path / "data")
        self.index = Index(path / "index.sqlite3")
        self.publisher = Publisher(self)
        self.gens = Gens(self.data, self.publisher.temp_name)
        self.fills = FillQueue(self.publisher.publish, self.housekeeping, pending)
        self.lock: DirLock | None = None
        self.owner: Owner | None = None
        self.claims = Claims(str(path / "claims"))
        self.space: Space | None = None
        self.tmp_fd = -1
        self._mutex = threading.RLock()
        self._touched: dict[str, None] = {}
        self._last_chores = _clock.monotonic()
        self.deferred = Deferred()
        self.state = "new"  # "open", "gone" (directory deleted), "broken", "closed"
        #: why the fill thread stopped using the index: "replaced" (deleted, or another
        #: file now) or "failed"; a caller's next call reopens or rebuilds it
        self.index_trouble: str | None = None
        self._retry_at = 0.0
        self.hits = self.misses = self.corrupt = self.errors = self.restarts = 0

    # -- open, restart, close -----------------------------------------------------------

    def ensure_open(self, *, foreground: bool) -> bool:
        """Open (first use, or after close) or restart; False when this call may not.

        Only a foreground call (a read or write by a caller) opens, creates a directory
        that is missing (warning when it had been open before) or reopens a lost index.
        The fill thread (``foreground=False``) never does: it works only while the tier
        is open and intact, so a directory being removed (``rmtree`` lists it, then
        removes what it listed) never gets a file, an index or an owner back from it.
        """
        if not foreground:
            return self.state == "open" and self.index_trouble is None
        if self.state == "open" and self.index_trouble is None and self._still_there():
            return True
        with self._mutex:
            if self.state == "open" and self._still_there():
                if self.index_trouble is not None:
                    return self._repair_index()
                return True
            if self.state == "broken" and _clock.monotonic() < self._retry_at:
                return False
            if self.state == "gone":
                self.warn(f"disk cache directory {self.path} was removed; it starts afresh")
            try:
                self._open()
            except (OSError, sqlite3.Error) as e:
                self._release_fds()
                self.index.close()
                self.state, self._retry_at = "broken", _clock.monotonic() + _RETRY_BROKEN
                self.errors += 1
                self.warn(f"disk cache {self.path} cannot be used ({e}); bypassed for now")
                return False
            return True

    def _still_there(self) -> bool:
        """Whether the open directory is still in place (else this process's view is gone):
        its ``data`` directory (the lock's) and ``tmp`` directory are the ones opened."""
        try:
            tmp_linked = self.tmp_fd >= 0 and os.fstat(self.tmp_fd).st_nlink > 0
        except OSError:
            tmp_linked = False
        if tmp_linked and self.lock is not None and self.lock.is_current():
            return True
        self.state = "gone"
        return False

    def _repair_index(self) -> bool:
        """Reopen or rebuild the index the fill thread found replaced or failing (a
        caller's thread, ``_mutex`` held); False if the directory cannot be used now."""
        try:
            with self.locked(foreground=True):
                pass
        except (OSError, sqlite3.Error) as e:
            self.warn(f"disk cache index {self.index.path} cannot be reopened ({e})")
            return False
        return True

    def _open(self) -> None:
        self._release_fds()
        self.index_trouble = None
        for sub in ("data", "tmp", "owners", "claims"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.lock = DirLock(self.data)
        self.owner = Owner(str(self.path / "owners"))
        self.tmp_fd = os.open(self.path / "tmp", _O_DIR)
        self.space = Space(
            self.index, self.max_bytes, self.unlink, self.tmp_fd,
            str(self.path / "owners"), self.owner.token,
        )  # fmt: skip
        with self.lock.held():
            self._open_index()
            with self.index.transaction() as db:
                self.space.reclaim(db)
                self.space.shrink(db)
        self.state = "open"

    def _open_index(self) -> None:
        """Open the index at ``path`` (held lock); rebuild it from the files if it is new."""
        try:
            fresh = self.index.open()
        except sqlite3.DatabaseError as e:
            self.index.recreate()  # raises if even that fails: the caller bypasses the tier
            self.warn(f"disk cache index {self.index.path} was unreadable ({e}); rebuilt")
            fresh = True
        if fresh:
            self.restarts += 1
            self._reindex()

    def _reindex(self) -> None:
        rows = scan(self.data, self.gens)
        with self.index.transaction() as db:
            self.index.reindex(db, rows)

    def close(self, *, flush: bool = True) -> None:
        """Write what is queued (if ``flush``), stop the fill thread, release everything."""
        if flush:
            self.fills.close()
        else:  # garbage collection or exit: never wait on the disk or on other processes
            self.fills.close(timeout=0)
        with self._mutex:
            if flush:
                with contextlib.suppress(OSError, sqlite3.Error):
                    self._write_touches()
            self.index.close()
            self._release_fds()
            if self.state == "open":
                self.state = "closed"

    def _release_fds(self) -> None:
        for thing in (self.lock, self.owner):
            if thing is not None:
                thing.close()
        self.lock = self.owner = None
        if self.tmp_fd >= 0:
            os.close(self.tmp_fd)
            self.tmp_fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[DirLock]:
        """The directory lock, after checking the directory is still this process's."""
        lock = self.lock
        if lock is None or self.state != "open":
            raise Gone(f"disk cache {self.path} is not open")
        with lock.held():
            if not lock.is_current():
                self.state = "gone"
                raise Gone(f"disk cache directory {self.path} was removed")
            yield lock

    @contextlib.contextmanager
    def locked(
        self, after: list[Callable[[], None]] | None = None, *, foreground: bool
    ) -> Iterator[sqlite3.Connection]:
        """:meth:`held`, and an index transaction on the current index.

        ``after``: callables run once the transaction has committed, the lock still held
        (publishing renames files in there, so each published file has its row).
        ``foreground``: a caller's call, which reopens or rebuilds a replaced or failing
        index; the fill thread raises :class:`Gone` instead and leaves that to a caller.
        """
        with self.held():
            self._usable_index(foreground=foreground)
            try:
                with self.index.transaction() as db:
                    yield db
            except sqlite3.DatabaseError as e:
                if not (isinstance(e, sqlite3.OperationalError) and "locked" in str(e)):
                    self._index_failed(e, foreground=foreground)
                raise
            for fn in after or ():
                fn()

    def _usable_index(self, *, foreground: bool) -> None:
        """(held lock) Make sure the index is the one at its path, working, or raise Gone."""
        if self.index_trouble is None and not self.index.is_current():
            self.index_trouble = "replaced"
        if self.index_trouble is None:
            return
        if not foreground:  # maybe the whole directory is being removed: create nothing
            raise Gone(f"disk cache index {self.index.path} is {self.index_trouble}")
        trouble, self.index_trouble = self.index_trouble, None
        if trouble == "failed":
            self.warn(f"disk cache index {self.index.path} failed; rebuilt")
            self.index.recreate()
            self._reindex()
        else:
            self.warn(f"disk cache index {self.index.path} was replaced; reopened")
            self._open_index()

    def _index_failed(self, e: sqlite3.DatabaseError, *, foreground: bool) -> None:
        """(held lock) The index failed: a caller rebuilds it now, the fill thread later."""
        if not foreground:
            self.index_trouble = "replaced" if not self.index.is_current() else "failed"
            return
        self.warn(f"disk cache index {self.index.path} failed ({e}); rebuilt")
        self.index.recreate()
        self._reindex()

    # -- reads --------------------------------------------------------------------------

    def file(self, name: str) -> str:
        return f"{self.data}/{subdir(name)}/{name}"

    def might_have(self, ns: str, key: str, span: Span) -> bool:
        names = (WHOLE, span) if span is not WHOLE else (WHOLE,)
        return any(os.path.exists(self.file(fmt.name_of(ns, key, s))) for s in names)

    def read(self, ns: str, key: str, span: Span) -> Entry | None:
        if self.deferred.covers(ns, key) or self.state in ("gone", "broken"):
            self.misses += 1
            return None
        for stored in (WHOLE, span) if span is not WHOLE else (WHOLE,):
            name = fmt.name_of(ns, key, stored)
            try:
                got = fmt.read_file(self.file(name), ns, key, stored, span)
            except FileNotFoundError:
                continue
            except fmt.Corrupt as e:
                self.drop(name, str(e))
                continue
            except OSError as e:
                self.warn(f"disk cache read of {key!r} failed ({e}); using the backing store")
                continue
            if got is None:
                continue
            head, data = got
            if self.gens.covered(ns, key, head.prefixes):  # a delete_dir the index missed
                self.drop(name, "under a prefix invalidated since it was filled")
                continue
            self.hits += 1
            self.touch(name)
            return Entry(data, head.filled_at, head.token)
        self.misses += 1
        return None

    def drop(self, name: str, why: str) -> None:
        """Delete a file that must not be served (corrupt, or stale)."""
        self.corrupt += 1
        logger.warning("Disk cache file %s dropped (%s); refetched", name, why)
        try:
            if not self.ensure_open(foreground=True):
                return
            with self.locked(foreground=True) as db:
                self.unlink(name)
                self.index.delete(db, list(self.index.sizes(db, [name]).items()))
        except (OSError, sqlite3.Error) as e:
            self.warn(f"could not drop disk cache file {name} ({e})")

    def unlink(self, name: str) -> None:
        assert self.lock is not None
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(f"{subdir(name)}/{name}", dir_fd=self.lock.fd)

    def ticket(self, ns: str, key: str) -> Ticket | None:
        """The ticket a fill takes before its fetch (None: this tier cannot take fills)."""
        if self._later:
            self.raise_warnings()
        if not self.ensure_open(foreground=True):
            return None
        stem = fmt.key_stem(ns, key)
        if self.lock is not None:  # the fill thread renames into existing subdirectories only
            with contextlib.suppress(OSError):
                os.mkdir(subdir(stem), dir_fd=self.lock.fd)
        return self.gens.ticket(stem)

    # -- housekeeping -------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Note an access (written with the next housekeeping, about once a second).

        A hit of a tier not open yet (a reader's first) opens it here, on the caller's
        thread: the fill thread that writes the access times never opens anything.
        """
        if self.state != "open" and not self.ensure_open(foreground=True):
            return
        self._touched[name] = None
        if _clock.monotonic() - self._last_chores > _HOUSEKEEPING_EVERY:
            self._last_chores = _clock.monotonic()
            self.fills.want_housekeeping()

    def housekeeping(self) -> None:
        """Deferred invalidations, access times, dead owners' temp files (fill thread)."""
        if self.deferred:
            self.deferred.run(self._invalidate_later, self.warn)
        try:
            self._write_touches()
            due = _clock.monotonic() - self._last_chores > _HOUSEKEEPING_EVERY
            if self.state == "open" and due:
                self._last_chores = _clock.monotonic()
                with self.locked(foreground=False) as db:
                    assert self.space is not None
                    self.space.reclaim(db)
        except Gone as e:  # removed, or its index is: nothing to keep, a caller restarts
            logger.info("disk cache housekeeping skipped: %s", e)
        except (OSError, sqlite3.Error) as e:
            self.warn(f"disk cache index at {self.path} failed ({e})")

    def _write_touches(self) -> None:
        if not self._touched or not self.ensure_open(foreground=False):
            return
        touched, self._touched = self._touched, {}
        with self.locked(foreground=False) as db:
            self.index.touch(db, touched)
