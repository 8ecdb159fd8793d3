"""The disk tier's index: sizes, access order and reservations, in one SQLite file.

The index is bookkeeping for the byte bound, never a record correctness rests on: which
fills may be published is decided by the generation files (``_diskgens``), and an
invalidation finds a key's files by name. So an index deleted or garbled under running
processes costs accuracy of the bound until it is rebuilt from the files (each describes
itself, ``_diskformat``), never a stale value. A process notices a replaced index by its
own handle on the file (still linked, same inode) and reopens it; an unreadable one is
deleted and rebuilt (a clean restart).

Access order is a counter (``tick``), never a clock. Reads (figures) use their own
connection, so they never wait behind a writer waiting for the lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathlib
    from collections.abc import Iterable, Iterator

__all__ = ["Index"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY, ns TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER NOT NULL, atime INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS entries_key ON entries (ns, key);
CREATE INDEX IF NOT EXISTS entries_atime ON entries (atime);
CREATE TABLE IF NOT EXISTS reservations (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v);
"""


class Index:
    """One process's connection to the index at ``path``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None  # writes, under the directory lock
        self._reader: sqlite3.Connection | None = None  # reads: never behind a writer's wait
        self._fd = -1  # our own handle on the file: is it still the one at ``path``?
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> bool:
        """Connect (creating the index if missing); True when it is new (rebuild it then).

        Call with the directory lock held, so the identity taken is the file's.
        """
        self.close()
        conn = _connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in (s.strip() for s in _SCHEMA.split(";")):
                if statement:
                    conn.execute(statement)
            fresh = conn.execute("SELECT v FROM meta WHERE k = 'tick'").fetchone() is None
            if fresh:
                conn.execute("DELETE FROM meta")  # an index of an older format
                conn.executemany("INSERT INTO meta VALUES (?, 0)", [("total",), ("tick",)])
            conn.execute("COMMIT")
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._reader = _connect(self.path, create=False)
        except BaseException:
            conn.close()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise
        self._conn = conn
        return fresh

    def recreate(self) -> None:
        """Delete the index files and start afresh (a clean restart: rebuild it after)."""
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        self.open()

    def close(self) -> None:
        with self._lock, self._read_lock:
            for conn in (self._conn, self._reader):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def is_current(self) -> bool:
        """Whether ``path`` is still the file this connection has open.

        Not by inode number alone: a deleted file's number is often reused at once by the
        next file created, so the file we hold must also still be linked.
        """
        if self._conn is None or self._fd < 0:
            return False
        try:
            mine, there = os.fstat(self._fd), os.stat(self.path)
        except OSError:
            return False
        return mine.st_nlink > 0 and (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)

    def nbytes(self) -> int:
        """Bytes of the index's files on disk (they count against the tier's bound)."""
        total = 0
        for suffix in ("", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._conn
            if db is None:
                raise sqlite3.OperationalError("the disk cache index is closed")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- reads (no lock needed) ---------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Bytes of the indexed files and their number."""
        with self._read_lock:
            if self._reader is None:
                raise sqlite3.OperationalError("the disk cache index is closed")
            total = self._reader.execute("SELECT v FROM meta WHERE k = 'total'").fetchone()[0]
            entries = self._reader.execute("SELECT count(*) FROM entries").fetchone()[0]
        return int(total), int(entries)

    # -- inside a transaction -----------------------------------------------------------

    @staticmethod
    def meta(db: sqlite3.Connection, k: str) -> int:
        return int(db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()[0])

    @staticmethod
    def add_meta(db: sqlite3.Connection, k: str, delta: int) -> int:
        db.execute("UPDATE meta SET v = v + ? WHERE k = ?", (delta, k))
        return Index.meta(db, k)

    @staticmethod
    def rows_of(
        db: sqlite3.Connection, ns: str, key: str, *, prefix: bool
    ) -> list[tuple[str, int]]:
        if prefix:
            return db.execute(
                "SELECT name, size FROM entries WHERE ns = ? AND substr(key, 1, ?) = ?",
                (ns, len(key), key),
            ).fetchall()
        return db.execute(
            "SELECT name, size FROM entries WHERE ns = ? AND key = ?", (ns, key)
        ).fetchall()

    @staticmethod
    def sizes(db: sqlite3.Connection, names: Iterable[str]) -> dict[str, int]:
        names = list(names)
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        return dict(db.execute(f"SELECT name, size FROM entries WHERE name IN ({marks})", names))

    def insert(self, db: sqlite3.Connection, rows: list[tuple[str, str, str, int]]) -> None:
        """Add or replace entries ``(name, ns, key, size)``, newest in the access order."""
        if not rows:
            return
        old = self.sizes(db, (r[0] for r in rows))
        tick = self.add_meta(db, "tick", 1)
        db.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
            [(*r, tick) for r in rows],
        )
        self.add_meta(db, "total", sum(r[3] for r in rows) - sum(old.values()))

    def delete(self, db: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
        if rows:
            db.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n, _ in rows])
            self.add_meta(db, "total", -sum(s for _, s in rows))

    @staticmethod
    def oldest(db: sqlite3.Connection, n: int) -> list[tuple[str, int]]:
        return db.execute("SELECT name, size FROM entries ORDER BY atime LIMIT ?", (n,)).fetchall()

    def touch(self, db: sqlite3.Connection, names: Iterable[str]) -> None:
        """Move ``names`` to the recent end of the access order."""
        names = list(names)
        if names:
            tick = self.add_meta(db, "tick", 1)
            db.executemany(
                "UPDATE entries SET atime = ? WHERE name = ?", [(tick, n) for n in names]
            )

    @staticmethod
    def reserved(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT coalesce(sum(bytes), 0) FROM reservations").fetchone()[0])

    @staticmethod
    def set_reservation(db: sqlite3.Connection, owner: str, nbytes: int) -> None:
        if nbytes > 0:
            db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?)", (owner, nbytes))
        else:
            db.execute("DELETE FROM reservations WHERE owner = ?", (owner,))

    def reindex(self, db: sqlite3.Connection, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Replace every entry with ``rows`` (rebuilt from the files' headers)."""
        db.execute("DELETE FROM entries")
        db.execute("UPDATE meta SET v = 0 WHERE k = 'total'")
        self.insert(db, list(rows))


def _connect(path: pathlib.Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection in rollback-journal mode, unsynced: the index is rebuilt from the files
    if a power loss corrupts it, and a killed process cannot corrupt it (the journal is
    written before the pages). Writers are already serialised by the directory lock."""
    target: str | pathlib.Path = path if create else f"file:{path}?mode=rw"
    conn = sqlite3.connect(
        target, timeout=30, isolation_level=None, check_same_thread=False, uri=not create
    )
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    return conn
