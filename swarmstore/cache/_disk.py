"""DiskTier: the local-disk tier, bounded by bytes, shared safely by threads and processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import sqlite3
import struct
import threading
import time
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
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
    Access times are batched (about once a second), so the LRU order is approximate.
    The index survives restarts; if it is lost, the files are re-indexed from their
    headers on open, and the byte bound is enforced again on open.

    Examples
    --------
    >>> import tempfile
    >>> tier = DiskTier(tempfile.mkdtemp(), max_bytes=2**20, fsync=False)
    >>> tier.write("ns", "c/0", None, b"abc", started_ns=0)
    True
    >>> tier.read("ns", "c/0", ("r", 1, 3)).data
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
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future[bool]] = set()
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
        """The cached bytes of ``(key, span)`` (from a whole-value file if there is one)."""
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

    def _read_file(
        self, path: pathlib.Path, ns: str, key: str, stored: Span, want: Span
    ) -> Entry | None:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) != _PREFIX.size:
                raise _Corrupt("truncated header")
            magic, hlen = _PREFIX.unpack(prefix)
            if magic != _MAGIC or hlen > 1 << 24:
                raise _Corrupt("bad magic")
            try:
                head = json.loads(f.read(hlen))
            except (ValueError, UnicodeDecodeError) as e:
                raise _Corrupt(f"bad header: {e}") from e
            if (
                head.get("ns") != ns
                or head.get("key") != key
                or head.get("span") != span_name(stored)
            ):
                return None  # a hash collision: another entry's file, not a corrupt one
            size, block, hashes = int(head["size"]), int(head["bs"]), head["h"]
            base = _PREFIX.size + hlen
            if os.fstat(f.fileno()).st_size != base + size:
                raise _Corrupt("length does not match header")
            start, stop = _bounds(size, want if stored is WHOLE else WHOLE)
            if stop <= start:
                return Entry(b"", float(head["t"]), head.get("tok"))
            first, last = start // block, (stop - 1) // block
            f.seek(base + first * block)
            raw = f.read(min(size, (last + 1) * block) - first * block)
        view = memoryview(raw)
        for i in range(first, last + 1):
            chunk = view[(i - first) * block : (i - first + 1) * block]
            if xxhash.xxh3_64_intdigest(chunk) != hashes[i]:
                raise _Corrupt(f"block {i} fails its checksum")
        offset = first * block
        data = (
            raw
            if (start, stop) == (offset, offset + len(raw))
            else raw[start - offset : stop - offset]
        )
        return Entry(data, float(head["t"]), head.get("tok"))

    # -- writes -------------------------------------------------------------------------

    def write(
        self,
        ns: str,
        key: str,
        span: Span,
        data: bytes,
        *,
        started_ns: int,
        filled_at: float | None = None,
        token: str | None = None,
    ) -> bool:
        """Store a copy of ``data``; False if it was dropped (too big, or key invalidated).

        ``started_ns`` is ``time.time_ns()`` taken before the value was fetched: if the key
        was invalidated at or after that moment, the value may be stale and is dropped.
        Raises OSError or sqlite3.Error when the disk fails (see :meth:`submit`).
        """
        name = _name(ns, key, span)
        hashes = [
            xxhash.xxh3_64_intdigest(memoryview(data)[i : i + _BLOCK])
            for i in range(0, len(data), _BLOCK)
        ]
        head = {
            "ns": ns,
            "key": key,
            "span": span_name(span),
            "size": len(data),
            "t": time.time() if filled_at is None else filled_at,
            "tok": token,
            "bs": _BLOCK,
            "h": hashes,
        }
        header = json.dumps(head, separators=(",", ":")).encode()
        size = _PREFIX.size + len(header) + len(data)
        if size > self.max_bytes:
            self.skipped += 1
            return False
        self._ensure_index()
        final = self._file(name)
        tmp = final.with_name(f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_PREFIX.pack(_MAGIC, len(header)))
                f.write(header)
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            with self._transaction() as db:
                if self._invalidated_since(db, ns, key, started_ns):
                    return False
                old = db.execute("SELECT size FROM entries WHERE name = ?", (name,)).fetchone()
                old_size = old[0] if old else 0
                self._evict(db, size - old_size, keep=name)
                os.replace(tmp, final)
                db.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                    (name, ns, key, size, time.time()),
                )
                db.execute("UPDATE meta SET v = v + ? WHERE k = 'total'", (size - old_size,))
            self.writes += 1
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def submit(self, ns: str, key: str, span: Span, data: bytes, **kwargs: Any) -> None:
        """:meth:`write` in a background thread; failures become a :class:`CacheWarning`.

        Reads never wait on the disk: if more than ``pending_bytes`` are already queued,
        this fill is skipped. :meth:`flush` waits for the queue.
        """
        with self._lock:
            if self._pending_bytes + len(data) > self.pending_limit:
                self.skipped += 1
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="swarmstore-disk-cache")
            self._pending_bytes += len(data)
            fut = self._pool.submit(self._write_quietly, ns, key, span, data, kwargs)
            self._pending.add(fut)
        nbytes = len(data)
        fut.add_done_callback(lambda f: self._done(f, nbytes))

    def _write_quietly(
        self, ns: str, key: str, span: Span, data: bytes, kwargs: dict[str, Any]
    ) -> bool:
        try:
            return self.write(ns, key, span, data, **kwargs)
        except (OSError, sqlite3.Error) as e:
            self.errors += 1
            self._degraded(f"disk cache write of {key!r} to {self.path} failed ({e})")
            return False

    def _done(self, fut: Future[bool], nbytes: int) -> None:
        with self._lock:
            self._pending.discard(fut)
            self._pending_bytes -= nbytes

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
        with self._lock:
            pending = list(self._pending)
        if pending:
            wait_futures(pending, timeout=timeout)
        self._flush_touches()

    def close(self) -> None:
        """Flush, then release the index connection and threads (reopened on next use)."""
        self.flush()
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
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

    def _file(self, name: str) -> pathlib.Path:
        return self.path / "data" / name[:2] / name

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
            self._evict(db, 0, keep="")
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

    def _evict(self, db: sqlite3.Connection, incoming: int, keep: str) -> None:
        """Remove least recently used files until ``incoming`` more bytes fit the bound."""
        self._flush_touches(db)
        total = db.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()[0]
        excess = total + incoming - self.max_bytes
        while excess > 0:
            rows = db.execute(
                "SELECT name, size FROM entries WHERE name != ? ORDER BY atime LIMIT 64", (keep,)
            ).fetchall()
            if not rows:
                return
            victims = []
            for name, size in rows:
                victims.append((name, size))
                excess -= size
                if excess <= 0:
                    break
            self._remove(db, victims)
            self.evictions += len(victims)

    def _remove(self, db: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
        if not rows:
            return
        db.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n, _ in rows])
        db.execute("UPDATE meta SET v = v - ? WHERE k = 'total'", (sum(s for _, s in rows),))
        for name, _ in rows:
            with contextlib.suppress(FileNotFoundError):
                self._file(name).unlink()

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
        self._touched[name] = time.time()
        if time.monotonic() - self._last_touch > _TOUCH_EVERY:
            try:
                self._flush_touches()
            except (OSError, sqlite3.Error) as e:
                self._degraded(f"disk cache index at {self.path} failed ({e})")

    def _flush_touches(self, db: sqlite3.Connection | None = None) -> None:
        self._last_touch = time.monotonic()
        if not self._touched:
            return
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
