"""DiskTier: the local-disk tier, bounded by bytes, shared safely by threads and processes."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import pathlib
import sqlite3
import struct
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore import config
from swarmstore.cache._memory import Entry
from swarmstore.cache._span import WHOLE, Span, span_name
from swarmstore.errors import CacheWarning

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DiskTier"]

logger = logging.getLogger(__name__)

_MAGIC = b"SWC1"
_PREFIX = struct.Struct("<4sI")  # magic, header length
_BLOCK = 1 << 20  # each block of a value carries its own xxh3-64, so ranges verify cheaply
_TOUCH_EVERY = 1.0  # seconds between batched access-time updates
_STALE_TMP = 600.0  # temp files older than this were left by a crashed writer
_KEEP_INVALIDATIONS_NS = 3600 * 10**9
_READ_ALL = 4 << 20  # files up to this size are read in one call; larger ones in parts
_HEAD_GUESS = 4096  # header read of a larger file (enough for values up to ~200 MiB)
_BATCH = 64  # background fills published per index transaction
_GATHER = 0.05  # seconds the fill thread waits for more fills to share a transaction
_LINGER = 2.0  # seconds an idle fill thread waits for work before it exits
_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY, ns TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER NOT NULL, atime REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_key ON entries (ns, key);
CREATE INDEX IF NOT EXISTS entries_atime ON entries (atime);
CREATE TABLE IF NOT EXISTS invalidations (
    ns TEXT NOT NULL, key TEXT NOT NULL, t INTEGER NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS prefix_invalidations (
    ns TEXT NOT NULL, prefix TEXT NOT NULL, t INTEGER NOT NULL, PRIMARY KEY (ns, prefix));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class _Corrupt(Exception):
    """A cache file failed its checks."""


class DiskTier:
    """Keep copies of values in files under ``path``, least recently used leaving first.

    Parameters
    ----------
    path : str or os.PathLike
        Cache directory. Several processes on one host (say two Dask workers) may share it.
    max_bytes : int or str, optional
        Bound on the bytes of all cache files (headers included). Default: config
        ``swarmstore.cache.disk-bytes``.
    fsync : bool, optional
        Fsync each file before renaming it into place. Default: ``swarmstore.cache.disk-fsync``.
    pending_bytes : int or str, optional
        Bytes of background writes (:meth:`submit`) in flight; beyond it fills are skipped
        rather than slowing reads down. Default: ``swarmstore.cache.disk-pending-bytes``.

    Notes
    -----
    Each value is one file: a JSON header (store namespace, key, span, size, fill time,
    version token, one xxh3-64 per 1 MiB block) then the bytes. A file is written to a temp
    name, fsynced and renamed into place, so readers see a whole old file or a whole new
    one, never a torn one; a reader verifies the blocks it returns, and a file that fails is
    deleted and reported as a miss, never returned.

    An SQLite index (WAL mode) in the directory holds sizes and access times; its write
    lock serialises, across threads and processes, the renames, evictions and
    invalidations. A fill records when its fetch began and is dropped if the key was
    invalidated since, so a slow reader cannot put back a value a writer just replaced.
    Access times are kept in memory and written by the fill thread about once a second
    (with the next fill batch if any), so a hit never waits for the index lock; the LRU
    order is accurate to about a second.
    The index survives restarts; if it is lost, the files are re-indexed from their
    headers on open, and the byte bound is enforced again on open.

    Examples
    --------
    >>> import tempfile
    >>> tier = DiskTier(tempfile.mkdtemp(), max_bytes=2**20, fsync=False)
    >>> tier.write("ns", "c/0", None, b"abc", started_ns=0)
    True
    >>> bytes(tier.read("ns", "c/0", ("r", 1, 3)).data)
    b'bc'
    >>> tier.close()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int | str | None = None,
        *,
        fsync: bool | None = None,
        pending_bytes: int | str | None = None,
    ) -> None:
        self.path = pathlib.Path(path).expanduser().absolute()
        self.max_bytes = int(config.get_bytes("cache.disk-bytes", max_bytes) or 0)
        self.fsync = bool(config.get("cache.disk-fsync") if fsync is None else fsync)
        self.pending_limit = int(config.get_bytes("cache.disk-pending-bytes", pending_bytes) or 0)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._db_ino: int | None = None
        self._touched: dict[str, float] = {}
        self._last_touch = time.monotonic()
        self._data = str(self.path / "data")
        self._subdirs: set[str] = set()
        self._tmp_seq = 0
        # The fill queue has its own lock: a read or a submit never waits behind an index
        # transaction (which may itself wait for another process's lock).
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Fill] = collections.deque()
        self._thread: threading.Thread | None = None
        self._busy = False  # the fill thread is writing a batch
        self._hurry = 0  # flush() calls waiting: write what is queued without gathering more
        self._want_touch = False  # access times are due: the fill thread writes them
        self._stop = False  # close(): an idle fill thread exits at once
        self._touch_lock = threading.Lock()
        self._pending_bytes = 0
        self._invalidations = 0
        self.hits = self.misses = self.evictions = self.corrupt = 0
        self.errors = self.skipped = self.writes = 0

    # -- identity -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"DiskTier({str(self.path)!r}, max_bytes={self.max_bytes})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DiskTier)
            and self.path == other.path
            and self.max_bytes == other.max_bytes
        )

    def __hash__(self) -> int:
        return hash((self.path, self.max_bytes))

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "max_bytes": self.max_bytes,
            "fsync": self.fsync,
            "pending_bytes": self.pending_limit,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- reads --------------------------------------------------------------------------

    def read(self, ns: str, key: str, span: Span) -> Entry | None:
        """The cached bytes of ``(key, span)`` (from a whole-value file if there is one).

        ``Entry.data`` is None for a remembered absent key.
        """
        for stored in (WHOLE, span) if span is not WHOLE else (WHOLE,):
            name = _name(ns, key, stored)
            try:
                entry = self._read_file(self._file(name), ns, key, stored, span)
            except FileNotFoundError:
                continue
            except _Corrupt as e:
                self._drop_corrupt(name, str(e))
                continue
            except OSError as e:
                self._degraded(f"disk cache read of {key!r} failed ({e}); using the backing store")
                continue
            if entry is not None:
                self.hits += 1
                self._touch(name)
                return entry
        self.misses += 1
        return None

    def might_have(self, ns: str, key: str, span: Span) -> bool:
        """Whether a file for ``(key, span)`` exists: one ``stat``, cheap enough to run on an
        event loop, so a cold miss does not pay a thread hop to learn the disk is empty."""
        names = (WHOLE, span) if span is not WHOLE else (WHOLE,)
        return any(os.path.exists(self._file(_name(ns, key, s))) for s in names)

    def _read_file(self, path: str, ns: str, key: str, stored: Span, want: Span) -> Entry | None:
        # Files up to _READ_ALL: one open, one fstat, one pread of the whole file, one
        # close (each call hands the GIL round; a separate header read cost 64 KiB hits a
        # third of their speed under concurrency). Larger files: the header, then only the
        # blocks wanted. The fd pins the inode: a concurrent rename shows the old file.
        fd = os.open(path, _O_READ)
        try:
            size_on_disk = os.fstat(fd).st_size
            small = size_on_disk <= _READ_ALL
            raw = _pread(fd, size_on_disk if small else _HEAD_GUESS, 0)
            if len(raw) < _PREFIX.size:
                raise _Corrupt("truncated header")
            magic, hlen = _PREFIX.unpack_from(raw)
            base = _PREFIX.size + hlen
            if magic != _MAGIC or base > size_on_disk:
                raise _Corrupt("bad magic")
            if len(raw) < base:
                raw += _pread(fd, base - len(raw), len(raw))
            try:
                head = json.loads(raw[_PREFIX.size : base])
            except (ValueError, UnicodeDecodeError) as e:
                raise _Corrupt(f"bad header: {e}") from e
            if head["ns"] != ns or head["key"] != key or head["span"] != span_name(stored):
                return None  # a hash collision: another entry's file, not a corrupt one
            if head.get("absent"):
                return Entry(None, float(head["t"]), head.get("tok"))
            size, block, hashes = int(head["size"]), int(head["bs"]), head["h"]
            if size_on_disk != base + size:
                raise _Corrupt("length does not match header")
            start, stop = _bounds(size, want if stored is WHOLE else WHOLE)
            if stop <= start:
                return Entry(b"", float(head["t"]), head.get("tok"))
            first, last = start // block, (stop - 1) // block
            lo, hi = first * block, min(size, (last + 1) * block)
            body: bytes | memoryview
            if base + hi <= len(raw):  # the first read got it all
                body = memoryview(raw)[base + lo : base + hi]
            else:
                body = _pread(fd, hi - lo, base + lo)
        finally:
            os.close(fd)
        if len(body) != hi - lo:
            raise _Corrupt("file shorter than its header says")
        view = memoryview(body)
        for i in range(first, last + 1):
            if (
                xxhash.xxh3_64_intdigest(view[(i - first) * block : (i - first + 1) * block])
                != (hashes[i])
            ):
                raise _Corrupt(f"block {i} fails its checksum")
        data = body if (start, stop) == (lo, hi) else view[start - lo : stop - lo]
        return Entry(data, float(head["t"]), head.get("tok"))

    # -- writes -------------------------------------------------------------------------

    def write(
        self,
        ns: str,
        key: str,
        span: Span,
        data: bytes | None,
        *,
        started_ns: int,
        filled_at: float | None = None,
        token: str | None = None,
    ) -> bool:
        """Store a copy of ``data`` (None: remember that the key is absent).

        Returns False if it was dropped: larger than the bound, or the key was invalidated
        at or after ``started_ns`` (``time.time_ns()`` taken before the value was fetched),
        so the value may be stale. Raises OSError or sqlite3.Error when the disk fails.
        """
        item = _Fill(ns, key, span, data, started_ns, filled_at, token)
        return self._write_batch([item])[0]

    def submit(
        self,
        ns: str,
        key: str,
        span: Span,
        data: bytes | None,
        *,
        started_ns: int,
        filled_at: float | None = None,
        token: str | None = None,
    ) -> None:
        """:meth:`write` in a background thread; failures become a :class:`CacheWarning`.

        Reads never wait on the disk: if more than ``pending_bytes`` are already queued,
        this fill is skipped. Queued fills are written in batches, one index transaction
        per batch. :meth:`flush` waits for the queue.
        """
        item = _Fill(ns, key, span, data, started_ns, filled_at, token)
        with self._cond:
            if self._pending_bytes + item.nbytes > self.pending_limit:
                self.skipped += 1
                return
            self._queue.append(item)
            self._pending_bytes += item.nbytes
        self._wake()

    def _wake(self) -> None:
        """Notify the fill thread, starting one if none is alive (it lingers briefly when
        idle, so a stream of misses does not pay a thread start each)."""
        with self._cond:
            if self._thread is not None:
                self._cond.notify_all()
                return
            thread = self._thread = threading.Thread(
                target=self._drain, name="swarmstore-disk-fill", daemon=True
            )
        thread.start()

    def _drain(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + _LINGER
                while not self._queue and not self._want_touch:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    self._cond.wait(left)
                if 0 < len(self._queue) < _BATCH and not self._hurry:
                    # gather: fills arriving together share one transaction (and fsync pass)
                    self._cond.wait_for(
                        lambda: len(self._queue) >= _BATCH or self._hurry != 0, _GATHER
                    )
                batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
                self._want_touch = False
                self._busy = True
            try:
                if batch:
                    self._write_batch(batch)  # access times go in the same transaction
                else:
                    self._flush_touches()
            except (OSError, sqlite3.Error) as e:
                self.errors += 1
                self._degraded(f"disk cache writes to {self.path} failed ({e})")
            finally:
                with self._cond:
                    self._pending_bytes -= sum(item.nbytes for item in batch)
                    self._busy = False
                    self._cond.notify_all()

    def _write_batch(self, batch: list[_Fill]) -> list[bool]:
        """Write temp files, then publish them all in one index transaction."""
        done = [False] * len(batch)
        staged: list[tuple[int, str, str, int]] = []  # (index, name, tmp, size)
        self._ensure_index()
        files: list[Any] = []
        try:
            for i, item in enumerate(batch):
                name = _name(item.ns, item.key, item.span)
                blob = _encode(item)
                if len(blob) > self.max_bytes:
                    self.skipped += 1
                    continue
                tmp, f = self._open_tmp(name)
                files.append(f)
                staged.append((i, name, tmp, len(blob)))
                for part in blob.parts:
                    f.write(part)
            # fsync the batch together: after the first, the journal is mostly committed
            while files:
                f = files.pop()
                with f:
                    if self.fsync:
                        os.fsync(f.fileno())
            if not staged:
                return done
            with self._transaction() as db:
                self._flush_touches(db)
                fresh = {}  # name -> (index, tmp, size); the last fill of a name wins
                for i, name, tmp, size in staged:
                    item = batch[i]
                    if not self._invalidated_since(db, item.ns, item.key, item.started_ns):
                        fresh[name] = (i, tmp, size)
                if not fresh:
                    return done
                marks = ",".join("?" * len(fresh))
                old = dict(
                    db.execute(f"SELECT name, size FROM entries WHERE name IN ({marks})", [*fresh])
                )
                incoming = sum(size - old.get(name, 0) for name, (_, _, size) in fresh.items())
                self._evict(db, incoming, keep=set(fresh))
                now = time.time()
                rows = []
                for name, (i, tmp, size) in fresh.items():
                    os.replace(tmp, self._file(name))
                    rows.append((name, batch[i].ns, batch[i].key, size, now))
                    done[i] = True
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("UPDATE meta SET v = v + ? WHERE k = 'total'", (incoming,))
                self.writes += len(rows)
            return done
        finally:
            for f in files:
                f.close()
            for _, _, tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _open_tmp(self, name: str) -> tuple[str, Any]:
        sub = os.path.join(self._data, name[:2])
        self._tmp_seq += 1
        tmp = os.path.join(
            sub, f".{name}.{os.getpid()}.{threading.get_ident()}.{self._tmp_seq}.tmp"
        )
        if sub not in self._subdirs:
            os.makedirs(sub, exist_ok=True)
            self._subdirs.add(sub)
        try:
            return tmp, open(tmp, "wb", buffering=0)
        except FileNotFoundError:  # the directory was removed underneath
            self._subdirs.discard(sub)
            os.makedirs(sub, exist_ok=True)
            return tmp, open(tmp, "wb", buffering=0)

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, ns: str, key: str) -> None:
        """Drop every file of ``key`` and refuse fills of it that began before now."""
        self._invalidate(ns, "key = ?", key, "invalidations", key)

    def invalidate_prefix(self, ns: str, prefix: str) -> None:
        """:meth:`invalidate` every key starting with ``prefix``."""
        self._invalidate(
            ns, "substr(key, 1, ?) = ?", (len(prefix), prefix), "prefix_invalidations", prefix
        )

    def _invalidate(self, ns: str, where: str, args: Any, table: str, what: str) -> None:
        self._ensure_index()
        now = time.time_ns()
        params = (ns, *args) if isinstance(args, tuple) else (ns, args)
        with self._transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)", (ns, what, now))
            rows = db.execute(
                f"SELECT name, size FROM entries WHERE ns = ? AND {where}", params
            ).fetchall()
            self._remove(db, rows)
            self._invalidations += 1
            if self._invalidations % 256 == 0:
                cutoff = now - _KEEP_INVALIDATIONS_NS
                db.execute("DELETE FROM invalidations WHERE t < ?", (cutoff,))
                db.execute("DELETE FROM prefix_invalidations WHERE t < ?", (cutoff,))

    @staticmethod
    def _invalidated_since(db: sqlite3.Connection, ns: str, key: str, started_ns: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM invalidations WHERE ns = ? AND key = ? AND t >= ? UNION ALL "
            "SELECT 1 FROM prefix_invalidations WHERE ns = ? AND t >= ? "
            "AND substr(?, 1, length(prefix)) = prefix LIMIT 1",
            (ns, key, started_ns, ns, started_ns, key),
        ).fetchone()
        return row is not None

    def clear(self) -> None:
        """Drop every file (of every namespace)."""
        self._ensure_index()
        with self._transaction() as db:
            self._remove(db, db.execute("SELECT name, size FROM entries").fetchall())

    # -- housekeeping -------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait for background writes and write out batched access times."""
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self._queue and not self._busy, timeout=timeout)
            finally:
                self._hurry -= 1
        try:
            self._flush_touches()
        except (OSError, sqlite3.Error) as e:
            self._degraded(f"disk cache index at {self.path} failed ({e})")

    def close(self) -> None:
        """Flush, then release the index connection (reopened on next use)."""
        self.flush()
        with self._cond:  # let an idle fill thread exit now rather than linger
            thread = self._thread
            self._stop = True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._cond:
            self._stop = False
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def stats(self) -> dict[str, int]:
        """Counters of this process, and the shared totals of the directory."""
        total = entries = 0
        try:
            self._ensure_index()
            with self._lock:
                assert self._conn is not None
                total = self._conn.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()[0]
                entries = self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        except (OSError, sqlite3.Error) as e:
            self._degraded(f"disk cache index at {self.path} is unreadable ({e})")
        return {
            "hits": self.hits,
            "misses": self.misses,
            "bytes": int(total),
            "entries": int(entries),
            "evictions": self.evictions,
            "corrupt": self.corrupt,
            "errors": self.errors,
            "skipped": self.skipped,
            "writes": self.writes,
            "max_bytes": self.max_bytes,
        }

    def disk_usage(self) -> int:
        """Bytes of every file under ``path`` except the index (for checking the bound)."""
        total = 0
        for root, _dirs, files in os.walk(self.path / "data"):
            for fn in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(root, fn)).st_size
        return total

    # -- internals ----------------------------------------------------------------------

    def _file(self, name: str) -> str:
        return os.path.join(self._data, name[:2], name)

    def _ensure_index(self) -> None:
        """Open the index; reopen it (with a warning) if the directory vanished underneath."""
        db_path = self.path / "index.sqlite3"
        with self._lock:
            if self._conn is not None:
                try:
                    if os.stat(db_path).st_ino == self._db_ino:
                        return
                except FileNotFoundError:
                    pass
                self._degraded(f"disk cache directory {self.path} was removed; recreating it")
                self._conn.close()
                self._conn = None
                self._subdirs.clear()
            self._open_index(db_path)

    def _open_index(self, db_path: pathlib.Path) -> None:
        (self.path / "data").mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        self._db_ino = os.stat(db_path).st_ino
        with self._transaction() as db:
            for statement in _statements():
                db.execute(statement)
            fresh = db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone() is None
            if fresh:
                db.execute("INSERT INTO meta VALUES ('total', 0)")
                self._reindex(db)
            self._evict(db, 0, keep=set())
        self._remove_stale_tmp()

    def _reindex(self, db: sqlite3.Connection) -> None:
        """Rebuild the index from the files' headers (the index was lost or is new)."""
        total = 0
        for path in self._files():
            try:
                with open(path, "rb") as f:
                    magic, hlen = _PREFIX.unpack(f.read(_PREFIX.size))
                    head = json.loads(f.read(hlen))
                    size = os.fstat(f.fileno()).st_size
                if magic != _MAGIC or size != _PREFIX.size + hlen + int(head["size"]):
                    raise _Corrupt("bad file")
                atime = os.stat(path).st_atime
            except (OSError, ValueError, KeyError, struct.error, _Corrupt):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                (path.name, head["ns"], head["key"], size, atime),
            )
            total += size
        db.execute("UPDATE meta SET v = ? WHERE k = 'total'", (total,))

    def _files(self) -> Iterator[pathlib.Path]:
        for sub in (self.path / "data").iterdir():
            if sub.is_dir():
                for path in sub.iterdir():
                    if not path.name.startswith("."):
                        yield path

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP
        for sub in (self.path / "data").iterdir():
            if sub.is_dir():
                for path in sub.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _evict(self, db: sqlite3.Connection, incoming: int, keep: set[str]) -> None:
        """Remove least recently used files until ``incoming`` more bytes fit the bound."""
        self._flush_touches(db)
        total = db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()[0]
        excess = total + incoming - self.max_bytes
        while excess > 0:
            rows = db.execute(
                "SELECT name, size FROM entries ORDER BY atime LIMIT ?", (64 + len(keep),)
            ).fetchall()
            victims = []
            for name, size in rows:
                if name in keep:
                    continue
                victims.append((name, size))
                excess -= size
                if excess <= 0:
                    break
            if not victims:
                return
            self._remove(db, victims)
            self.evictions += len(victims)

    def _remove(self, db: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
        if not rows:
            return
        db.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n, _ in rows])
        db.execute("UPDATE meta SET v = v - ? WHERE k = 'total'", (sum(s for _, s in rows),))
        for name, _ in rows:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(name))

    def _drop_corrupt(self, name: str, why: str) -> None:
        self.corrupt += 1
        logger.warning("Corrupt disk cache file %s (%s); dropped and refetched", name, why)
        try:
            self._ensure_index()
            with self._transaction() as db:
                row = db.execute("SELECT size FROM entries WHERE name = ?", (name,)).fetchone()
                self._remove(db, [(name, row[0] if row else 0)])
        except (OSError, sqlite3.Error) as e:
            self._degraded(f"could not drop corrupt disk cache file {name} ({e})")

    def _touch(self, name: str) -> None:
        """Note an access; the fill thread writes access times about once a second (with
        the fill batches when there are any), so a hit never waits on the index."""
        with self._touch_lock:
            self._touched[name] = time.time()
        if time.monotonic() - self._last_touch > _TOUCH_EVERY and not self._want_touch:
            with self._cond:
                self._want_touch = True
            self._last_touch = time.monotonic()
            self._wake()

    def _flush_touches(self, db: sqlite3.Connection | None = None) -> None:
        self._last_touch = time.monotonic()
        if not self._touched:
            return
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        rows = [(t, n) for n, t in touched.items()]
        if db is not None:
            db.executemany("UPDATE entries SET atime = ? WHERE name = ?", rows)
            return
        self._ensure_index()
        with self._transaction() as conn:
            conn.executemany("UPDATE entries SET atime = ? WHERE name = ?", rows)

    def _degraded(self, message: str) -> None:
        logger.warning("%s", message)
        warnings.warn(message, CacheWarning, stacklevel=3)


@dataclass(frozen=True, slots=True)
class _Fill:
    ns: str
    key: str
    span: Span
    data: bytes | None
    started_ns: int
    filled_at: float | None
    token: str | None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else 0


@dataclass(frozen=True, slots=True)
class _Blob:
    parts: tuple[bytes | memoryview, ...]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


def _encode(item: _Fill) -> _Blob:
    """A cache file: magic, header length, JSON header, then the bytes."""
    data = item.data if item.data is not None else b""
    view = memoryview(data)
    head: dict[str, Any] = {
        "ns": item.ns,
        "key": item.key,
        "span": span_name(item.span),
        "size": len(data),
        "t": time.time() if item.filled_at is None else item.filled_at,
        "tok": item.token,
        "bs": _BLOCK,
        "h": [xxhash.xxh3_64_intdigest(view[i : i + _BLOCK]) for i in range(0, len(data), _BLOCK)],
    }
    if item.data is None:
        head["absent"] = True
    header = json.dumps(head, separators=(",", ":")).encode()
    return _Blob((_PREFIX.pack(_MAGIC, len(header)), header, view))


def _pread(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` from ``offset`` (fewer only at end of file)."""
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def _name(ns: str, key: str, span: Span) -> str:
    return xxhash.xxh3_128_hexdigest(f"{ns}\0{key}\0{span_name(span)}".encode())


def _bounds(size: int, span: Span) -> tuple[int, int]:
    """``[start, stop)`` of ``span`` within a value of ``size`` bytes."""
    if span is None:
        return 0, size
    if span[0] == "r":
        return min(span[1], size), min(max(span[1], span[2]), size)  # type: ignore[misc]
    if span[0] == "o":
        return min(span[1], size), size
    return max(0, size - span[1]), size
