"""The disk tier's index: sizes, access order and per-key generations, in one SQLite file.

The index is bookkeeping, never the only record of what the files hold: every file
describes itself (``_diskformat``), so a lost or unreadable index is rebuilt from the
files. Correctness rests on two rules the callers keep under the directory lock
(``_disklocks.DirLock``): a file becomes visible only after its row is committed, and a
file is unlinked before its row is deleted; so every file on disk has a row, and an
invalidation that drops a key's rows reaches every file of it.

Ordering is by counters, never clocks: ``clock`` counts invalidations (each records its
count for the key or prefix, its *generation*) and ``tick`` counts access batches (the
LRU order). A fill's ticket is ``(instance, clock)`` read before its fetch; it may be
published only if the index is the same incarnation (``instance``) and no generation of
its key is newer. The index uses a rollback journal (one file to watch: deleting it under
running processes is detected by its inode). Reads (tickets, figures) use their own
connection, so they never wait behind a writer waiting for the lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathlib
    from collections.abc import Iterable, Iterator

__all__ = ["Index", "Ticket"]

type Ticket = tuple[str, int]

#: generations kept before the older half is forgotten (older tickets are then refused)
_KEEP_GENS = 100_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY, ns TEXT NOT NULL, key TEXT NOT NULL,
    size INTEGER NOT NULL, atime INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS entries_key ON entries (ns, key);
CREATE INDEX IF NOT EXISTS entries_atime ON entries (atime);
CREATE TABLE IF NOT EXISTS gens (
    ns TEXT NOT NULL, key TEXT NOT NULL, gen INTEGER NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS prefix_gens (
    ns TEXT NOT NULL, prefix TEXT NOT NULL, gen INTEGER NOT NULL, PRIMARY KEY (ns, prefix));
CREATE TABLE IF NOT EXISTS reservations (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v);
"""


class Index:
    """One process's connection to the index at ``path``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.instance = ""
        self._conn: sqlite3.Connection | None = None  # writes, under the directory lock
        self._reader: sqlite3.Connection | None = None  # reads: never behind a writer's wait
        self._ino: int | None = None
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._bumps = 0

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> bool:
        """Connect (creating the index if missing); True when it was created afresh.

        Call with the directory lock held, so the identity taken is the file's.
        """
        self.close()
        conn = _connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in (s.strip() for s in _SCHEMA.split(";")):
                if statement:
                    conn.execute(statement)
            row = conn.execute("SELECT v FROM meta WHERE k = 'instance'").fetchone()
            fresh = row is None
            if fresh:
                self.instance = uuid.uuid4().hex
                conn.execute("DELETE FROM meta")  # an index of an older format
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("instance", self.instance), ("clock", 0), ("floor", 0), ("total", 0),
                     ("tick", 0)],
                )  # fmt: skip
            else:
                self.instance = str(row[0])
            conn.execute("COMMIT")
            self._ino = os.stat(self.path).st_ino
            self._reader = _connect(self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return fresh

    def recreate(self) -> None:
        """Delete the index files and start a new incarnation (a clean restart)."""
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

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def is_current(self) -> bool:
        """Whether ``path`` is still the file this connection has open."""
        try:
            return self._conn is not None and os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            return False

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

    def ticket(self) -> Ticket:
        """``(instance, clock)`` now: take it before fetching a value to fill."""
        with self._read_lock:
            if self._reader is None:
                raise sqlite3.OperationalError("the disk cache index is closed")
            row = self._reader.execute(
                "SELECT (SELECT v FROM meta WHERE k = 'instance'),"
                " (SELECT v FROM meta WHERE k = 'clock')"
            ).fetchone()
        return str(row[0]), int(row[1])

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

    def bump(self, db: sqlite3.Connection, ns: str, key: str, *, prefix: bool) -> int:
        """Record an invalidation of ``key`` (or of the prefix ``key``); its generation."""
        gen = self.add_meta(db, "clock", 1)
        table = "prefix_gens" if prefix else "gens"
        db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)", (ns, key, gen))
        self._bumps += 1
        if self._bumps % 1024 == 0:
            self._forget_old(db)
        return gen

    def current(self, db: sqlite3.Connection, ns: str, key: str, ticket: Ticket) -> bool:
        """Whether no invalidation of ``key`` happened since ``ticket`` in this incarnation."""
        instance, clock = ticket
        now = db.execute("SELECT v FROM meta WHERE k = 'instance'").fetchone()[0]
        if instance != now or clock < self.meta(db, "floor"):
            return False
        row = db.execute(
            "SELECT 1 FROM gens WHERE ns = ? AND key = ? AND gen > ? UNION ALL "
            "SELECT 1 FROM prefix_gens WHERE ns = ? AND gen > ? "
            "AND substr(?, 1, length(prefix)) = prefix LIMIT 1",
            (ns, key, clock, ns, clock, key),
        ).fetchone()
        return row is None

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

    def _forget_old(self, db: sqlite3.Connection) -> None:
        for table in ("gens", "prefix_gens"):
            count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if count <= (_KEEP_GENS if table == "gens" else _KEEP_GENS >> 6):
                continue
            cut = db.execute(
                f"SELECT gen FROM {table} ORDER BY gen LIMIT 1 OFFSET ?", (count // 2,)
            ).fetchone()[0]
            db.execute(f"DELETE FROM {table} WHERE gen <= ?", (cut,))
            db.execute("UPDATE meta SET v = max(v, ?) WHERE k = 'floor'", (cut + 1,))

    def reindex(self, db: sqlite3.Connection, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Replace every entry with ``rows`` (rebuilt from the files' headers)."""
        db.execute("DELETE FROM entries")
        db.execute("UPDATE meta SET v = 0 WHERE k = 'total'")
        self.insert(db, list(rows))


def _connect(path: pathlib.Path) -> sqlite3.Connection:
    """A connection in rollback-journal mode, unsynced: the index is rebuilt from the files
    if a power loss corrupts it, and a killed process cannot corrupt it (the journal is
    written before the pages). Writers are already serialised by the directory lock."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    return conn
