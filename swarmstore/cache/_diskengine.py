"""The disk tier's machinery: open and restart, read, publish, invalidate, housekeeping.

:class:`Engine` is everything a :class:`~swarmstore.cache.DiskTier` does, kept apart from
it so the fill thread and the garbage-collection finalizer reference the engine, never
the tier. Directory layout::

    <path>/index.sqlite3   sizes, access order, generations (``_diskindex``)
    <path>/data/xx/<name>  one file per cached value (``_diskformat``)
    <path>/tmp/<owner>.<n> fills being written (counted against the bound)
    <path>/owners/<owner>  liveness locks of the processes using the directory
    <path>/claims/<name>   single-flight claims (``_disklocks``)

Mutations hold the directory lock and first check that the directory and the index are
still the ones this process opened: a deleted index is reopened (rebuilt from the files
when it is new, which also starts a new incarnation that voids every older ticket); a
deleted cache directory stops this process's fills and is only re-created by a
foreground call, with a :class:`~swarmstore.errors.CacheWarning`. Files are created,
renamed and unlinked relative to the directory fds, so nothing is ever written into a
directory that was deleted meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import warnings
from typing import TYPE_CHECKING, Any

import swarmstore.cache._diskformat as fmt
from swarmstore import _clock
from swarmstore.cache._diskevict import Space
from swarmstore.cache._diskfill import Fill, FillQueue
from swarmstore.cache._diskindex import Index, Ticket
from swarmstore.cache._disklocks import Claims, DirLock, Owner
from swarmstore.cache._span import WHOLE, Span
from swarmstore.cache._tier import Entry
from swarmstore.errors import CacheWarning

if TYPE_CHECKING:
    import pathlib
    from collections.abc import Callable, Iterator

__all__ = ["HOOKS", "Engine", "Gone"]

logger = logging.getLogger(__name__)

#: test hooks: a function run at a named point of publishing or invalidating (a kill)
HOOKS: dict[str, Callable[[], None]] = {}
_HOUSEKEEPING_EVERY = 1.0  # seconds between access-time writes and dead-owner sweeps
_RETRY_BROKEN = 5.0  # seconds before a tier that could not open tries again
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _at(point: str) -> None:
    hook = HOOKS.get(point)
    if hook is not None:
        hook()


class Gone(OSError):
    """The cache directory was deleted or replaced under this process."""


class Engine:
    """The state and work of one DiskTier instance (one "process" of the directory)."""

    def __init__(self, path: pathlib.Path, max_bytes: int, fsync: bool, pending: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.data = str(path / "data")
        self.index = Index(path / "index.sqlite3")
        self.fills = FillQueue(self.publish, self.housekeeping, pending)
        self.lock: DirLock | None = None
        self.owner: Owner | None = None
        self.claims = Claims(str(path / "claims"))
        self.space: Space | None = None
        self._tmp_fd = -1
        self._seq = itertools.count()
        self._mutex = threading.RLock()
        self._touched: dict[str, None] = {}
        self._last_chores = _clock.monotonic()
        self._deferred: list[tuple[str, str, bool]] = []
        self._pending: dict[tuple[str, str, bool], int] = {}
        self._warned: set[str] = set()
        self.state = "new"  # "open", "gone" (directory deleted), "broken", "closed"
        self._retry_at = 0.0
        self.hits = self.misses = self.corrupt = self.errors = self.writes = 0
        self.cut = self.restarts = 0

    # -- open, restart, close -----------------------------------------------------------

    def ensure_open(self, *, foreground: bool) -> bool:
        """Open (first use, or after close) or restart; False when this call may not.

        Only a foreground call (a read or write by a caller) opens a directory that is
        missing, and warns when it had been open before: the fill thread never does.
        """
        if self.state == "open" and (not foreground or self._still_there()):
            return True
        with self._mutex:
            if self.state == "open" and (not foreground or self._still_there()):
                return True
            if not foreground and self.state in ("gone", "broken"):
                return False
            if self.state == "broken" and _clock.monotonic() < self._retry_at:
                return False
            if self.state == "gone":
                self.warn(f"disk cache directory {self.path} was removed; it starts afresh")
            try:
                self._open(create=foreground)
            except (OSError, sqlite3.Error) as e:
                self._release_fds()
                self.index.close()
                self.state, self._retry_at = "broken", _clock.monotonic() + _RETRY_BROKEN
                self.errors += 1
                self.warn(f"disk cache {self.path} cannot be used ({e}); bypassed for now")
                return False
            return True

    def _still_there(self) -> bool:
        """Whether the open directory is still in place (else this process's view is gone)."""
        if self.lock is not None and self.lock.is_current():
            return True
        self.state = "gone"
        return False

    def _open(self, *, create: bool) -> None:
        self._release_fds()
        if not create and not (self.path / "data").is_dir():
            raise Gone(f"disk cache directory {self.path} is missing")
        for sub in ("data", "tmp", "owners", "claims"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.lock = DirLock(self.data)
        self.owner = Owner(str(self.path / "owners"))
        self._tmp_fd = os.open(self.path / "tmp", _O_DIR)
        self.space = Space(
            self.index, self.max_bytes, self._unlink, self._tmp_fd,
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
        rows = []
        for sub in os.scandir(self.data):
            if not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                row = _describe(f.path, f.name)
                if row is None:
                    with contextlib.suppress(OSError):
                        os.unlink(f.path)  # foreign, corrupt or an old format: never served
                else:
                    rows.append(row)
        with self.index.transaction() as db:
            self.index.reindex(db, rows)

    def close(self, *, flush: bool = True) -> None:
        """Write what is queued (if ``flush``), stop the fill thread, release everything."""
        if flush:
            self.fills.close()
        else:
            self.fills.flush(timeout=0)
            self.fills.close(timeout=1)
        with self._mutex:
            try:
                self._write_touches()
            except (OSError, sqlite3.Error):
                pass
            self.index.close()
            self._release_fds()
            if self.state == "open":
                self.state = "closed"

    def _release_fds(self) -> None:
        for thing in (self.lock, self.owner):
            if thing is not None:
                thing.close()
        self.lock = self.owner = None
        if self._tmp_fd >= 0:
            os.close(self._tmp_fd)
            self._tmp_fd = -1

    @contextlib.contextmanager
    def locked(self, after: list[Callable[[], None]] | None = None) -> Iterator[sqlite3.Connection]:
        """The directory lock and an index transaction, after checking both are current.

        ``after``: callables run once the transaction has committed, the lock still held
        (publishing renames files in there: a row is committed before its file appears).
        """
        lock = self.lock
        if lock is None or self.state != "open":
            raise Gone(f"disk cache {self.path} is not open")
        with lock.held():
            if not lock.is_current():
                self.state = "gone"
                raise Gone(f"disk cache directory {self.path} was removed")
            if not self.index.is_current():
                self.warn(f"disk cache index {self.index.path} was replaced; reopened")
                self._open_index()
            try:
                with self.index.transaction() as db:
                    yield db
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                    raise
                self.warn(f"disk cache index {self.index.path} failed ({e}); rebuilt")
                self.index.recreate()  # a new incarnation: every older ticket is void
                self._reindex()
                raise
            for fn in after or ():
                fn()

    # -- reads --------------------------------------------------------------------------

    def file(self, name: str) -> str:
        return f"{self.data}/{name[:2]}/{name}"

    def might_have(self, ns: str, key: str, span: Span) -> bool:
        names = (WHOLE, span) if span is not WHOLE else (WHOLE,)
        return any(os.path.exists(self.file(fmt.name_of(ns, key, s))) for s in names)

    def read(self, ns: str, key: str, span: Span) -> Entry | None:
        if (self._pending and self.is_pending(ns, key)) or self.state in ("gone", "broken"):
            self.misses += 1
            return None
        for stored in (WHOLE, span) if span is not WHOLE else (WHOLE,):
            name = fmt.name_of(ns, key, stored)
            try:
                got = fmt.read_file(self.file(name), ns, key, stored, span)
            except FileNotFoundError:
                continue
            except fmt.Corrupt as e:
                self.drop_corrupt(name, str(e))
                continue
            except OSError as e:
                self.warn(f"disk cache read of {key!r} failed ({e}); using the backing store")
                continue
            if got is not None:
                head, data = got
                self.hits += 1
                self.touch(name)
                return Entry(data, head.filled_at, head.token)
        self.misses += 1
        return None

    def drop_corrupt(self, name: str, why: str) -> None:
        self.corrupt += 1
        logger.warning("Corrupt disk cache file %s (%s); dropped and refetched", name, why)
        try:
            if not self.ensure_open(foreground=True):
                return
            with self.locked() as db:
                self._unlink(name)
                self.index.delete(db, list(self.index.sizes(db, [name]).items()))
        except (OSError, sqlite3.Error) as e:
            self.warn(f"could not drop corrupt disk cache file {name} ({e})")

    # -- tickets and claims -------------------------------------------------------------

    def ticket(self) -> Ticket | None:
        """The ticket a fill takes before its fetch; None when the index is unusable."""
        try:
            if not self.ensure_open(foreground=True):
                return None
            return self.index.ticket()
        except (OSError, sqlite3.Error) as e:
            self.warn(f"disk cache index {self.index.path} is unreadable ({e})")
            return None

    # -- publishing fills ---------------------------------------------------------------

    def publish(self, batch: list[Fill]) -> None:
        """Write ``batch`` to temp files, then publish the fresh ones (fill thread or caller)."""
        try:
            if not self.ensure_open(foreground=False):
                return
            items = self._reserve(batch)
            if not items:
                return
            try:
                self._commit(self._stage(items))
            except BaseException:
                self._clear_reservation()
                raise
        except Gone:
            logger.info("disk cache %s is gone; fills dropped", self.path)
        except (OSError, sqlite3.Error) as e:
            self.errors += 1
            self.warn(f"disk cache writes to {self.path} failed ({e})")

    def _reserve(self, batch: list[Fill]) -> list[tuple[Fill, tuple[Any, ...], int]]:
        encoded = []
        for fill in batch:
            parts = fmt.encode(fill.ns, fill.key, fill.span, fill.data, fill.filled_at, fill.token)
            encoded.append((fill, parts, sum(len(p) for p in parts)))
        assert self.space is not None
        with self.locked() as db:
            fits = self.space.fit(db, [size for _, _, size in encoded])
        self.cut += fits.count(False)
        _at("reserved")
        return [item for item, ok in zip(encoded, fits, strict=True) if ok]

    def _stage(self, items: list[tuple[Fill, tuple[Any, ...], int]]) -> list[tuple[Fill, str, int]]:
        """Write each value to a temp file; (fill, temp name, size) of those written."""
        assert self.owner is not None
        staged, fds = [], []
        try:
            for fill, parts, size in items:
                tmp = f"{self.owner.token}.{next(self._seq)}"
                fd = os.open(tmp, _O_TMP, 0o644, dir_fd=self._tmp_fd)
                fds.append(fd)
                staged.append((fill, tmp, size))
                for part in parts:
                    if os.write(fd, part) != len(part):
                        raise OSError("short write to a disk cache temp file")
            for fd in fds:
                if self.fsync:
                    os.fsync(fd)
        except BaseException:
            self._discard_temps(staged)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        _at("staged")
        return staged

    def _commit(self, staged: list[tuple[Fill, str, int]]) -> None:
        """Rows first (committed), then renames, under one hold of the directory lock."""
        assert self.owner is not None
        fresh: dict[str, tuple[Fill, str, int]] = {}  # name -> ...; the last fill of a name wins
        try:
            with self.locked(after=[lambda: self._rename_all(fresh)]) as db:
                for fill, tmp, size in staged:
                    if fill.ticket is not None and self.index.current(
                        db, fill.ns, fill.key, fill.ticket
                    ):
                        fresh[fmt.name_of(fill.ns, fill.key, fill.span)] = (fill, tmp, size)
                rows = [(n, f.ns, f.key, size) for n, (f, _, size) in fresh.items()]
                self.index.insert(db, rows)
                self.index.set_reservation(db, self.owner.token, 0)
                _at("inserted")
        finally:
            # dropped fills (stale tickets) and anything not renamed
            self._discard_temps([s for s in staged if not s[0].done])

    def _rename_all(self, fresh: dict[str, tuple[Fill, str, int]]) -> None:
        _at("committed")
        for name, (fill, tmp, _) in fresh.items():
            self._rename(tmp, name)
            fill.done = True
            fill.release()
            self.writes += 1
            _at("renamed")

    def _rename(self, tmp: str, name: str) -> None:
        assert self.lock is not None
        target = f"{name[:2]}/{name}"
        try:
            os.replace(tmp, target, src_dir_fd=self._tmp_fd, dst_dir_fd=self.lock.fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name[:2], dir_fd=self.lock.fd)
            os.replace(tmp, target, src_dir_fd=self._tmp_fd, dst_dir_fd=self.lock.fd)

    def _discard_temps(self, staged: list[tuple[Fill, str, int]]) -> None:
        for _, tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._tmp_fd)

    def _clear_reservation(self) -> None:
        if self.owner is None or self.state != "open":
            return
        with contextlib.suppress(OSError, sqlite3.Error):
            with self.locked() as db:
                self.index.set_reservation(db, self.owner.token, 0)

    def _unlink(self, name: str) -> None:
        assert self.lock is not None
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(f"{name[:2]}/{name}", dir_fd=self.lock.fd)

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, ns: str, key: str, prefix: bool, *, foreground: bool = True) -> None:
        """Drop every file of ``key`` (or prefix) and void tickets taken before now.

        Raises OSError or sqlite3.Error if it could not, after dropping the files by name
        (and restarting the index, which voids every ticket, when the index failed).
        """
        if not self.ensure_open(foreground=foreground):
            if self.state == "broken":  # no index here, but other processes may read files
                self._invalidate_blind(ns, key, prefix)
            return  # this process reads nothing from the directory now
        try:
            with self.locked() as db:
                self.index.bump(db, ns, key, prefix=prefix)
                rows = self.index.rows_of(db, ns, key, prefix=prefix)
                for name, _ in rows:  # files first, rows after
                    self._unlink(name)
                _at("unlinked")
                self.index.delete(db, rows)
        except (OSError, sqlite3.Error):
            self._invalidate_blind(ns, key, prefix)
            raise

    def _invalidate_blind(self, ns: str, key: str, prefix: bool) -> None:
        """Without the index: unlink the key's files by name (a prefix: every file)."""
        stem = fmt.key_stem(ns, key)
        with contextlib.suppress(OSError):
            for sub in os.scandir(self.data):
                if prefix or sub.name == stem[:2]:
                    for f in os.scandir(sub.path):
                        if prefix or f.name.startswith(stem):
                            with contextlib.suppress(OSError):
                                os.unlink(f.path)

    def defer(self, ns: str, key: str, prefix: bool) -> None:
        """Invalidate soon, in the fill thread; reads of the key miss until it is done."""
        with self._mutex:
            self._pending[(ns, key, prefix)] = self._pending.get((ns, key, prefix), 0) + 1
            self._deferred.append((ns, key, prefix))
        self.fills.want_housekeeping()

    def is_pending(self, ns: str, key: str) -> bool:
        pending = list(self._pending)
        return any(
            p_ns == ns and (k == key or (pre and key.startswith(k))) for p_ns, k, pre in pending
        )

    def _run_deferred(self) -> None:
        with self._mutex:
            todo, self._deferred = self._deferred, []
        for item in todo:
            try:
                self.invalidate(*item, foreground=False)
            except (OSError, sqlite3.Error) as e:
                self.warn(f"disk cache could not drop {item[1]!r} ({e})")
            finally:
                with self._mutex:
                    left = self._pending.pop(item, 1) - 1
                    if left > 0:
                        self._pending[item] = left

    # -- housekeeping -------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Note an access (written with the next housekeeping, about once a second)."""
        self._touched[name] = None
        if _clock.monotonic() - self._last_chores > _HOUSEKEEPING_EVERY:
            self._last_chores = _clock.monotonic()
            self.fills.want_housekeeping()

    def housekeeping(self) -> None:
        """Deferred invalidations, access times, dead owners' temp files (fill thread)."""
        if self._deferred:
            self._run_deferred()
        try:
            self._write_touches()
            if (
                self.state == "open"
                and _clock.monotonic() - self._last_chores > _HOUSEKEEPING_EVERY
            ):
                self._last_chores = _clock.monotonic()
                with self.locked() as db:
                    assert self.space is not None
                    self.space.reclaim(db)
        except (OSError, sqlite3.Error) as e:
            self.warn(f"disk cache index at {self.path} failed ({e})")

    def _write_touches(self) -> None:
        if not self._touched or not self.ensure_open(foreground=False):
            return
        touched, self._touched = self._touched, {}
        with self.locked() as db:
            self.index.touch(db, touched)

    def warn(self, message: str) -> None:
        """Log ``message``; the first time, and on a caller's thread, a CacheWarning too."""
        logger.warning("%s", message)
        kind = message.split("(")[0]
        if kind in self._warned or threading.current_thread().name == "swarmstore-disk-fill":
            return
        self._warned.add(kind)
        warnings.warn(message, CacheWarning, stacklevel=4)


def _describe(path: str, name: str) -> tuple[str, str, str, int] | None:
    """``(name, ns, key, size)`` of a well-formed cache file stored under its own name."""
    try:
        with open(path, "rb") as f:
            raw = f.read(fmt.PREFIX.size)
            raw += f.read(fmt.prefix_length(raw) - len(raw))
            size = os.fstat(f.fileno()).st_size
        head = fmt.decode_header(raw, size)
    except (OSError, fmt.Corrupt):
        return None
    if fmt.key_stem(head.ns, head.key) + fmt.span_digest(head.span) != name:
        return None
    return name, head.ns, head.key, size
