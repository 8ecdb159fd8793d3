"""The disk tier's byte bound: what counts, what leaves first, what is cut.

Everything the tier puts on disk counts: published files, the temp files of fills being
written (each process *reserves* their bytes in the index before writing them), and the
index itself. Room is made by evicting the least recently used entries (file unlinked,
then row deleted); a fill that cannot fit even then is cut from its batch, so one batch
larger than the bound never overshoots it.

A process that dies leaves temp files and a reservation behind; its owner lock is free
then, so the next process to look (at most once a second, and whenever room is short)
deletes them and drops the reservation.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from swarmstore.cache._disklocks import dead_owners

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

    from swarmstore.cache._diskindex import Index

__all__ = ["INDEX_SLACK", "Space"]

#: room kept for the index to grow within a transaction (pages, the rollback journal);
#: a sixteenth of the bound when that is less
INDEX_SLACK = 64 << 10


class Space:
    """Plans room under the bound; every method runs inside an index transaction."""

    def __init__(
        self,
        index: Index,
        max_bytes: int,
        unlink: Callable[[str], None],
        tmp_fd: int,
        owners_dir: str,
        me: str,
    ) -> None:
        self.index = index
        self.max_bytes = max_bytes
        self._unlink = unlink
        self._tmp_fd = tmp_fd
        self._owners_dir = owners_dir
        self._me = me
        self.evictions = 0
        self.reclaimed = 0

    def budget(self) -> int:
        """Bytes the files and temp files may take (the bound less the index)."""
        return self.max_bytes - self.index.nbytes() - min(INDEX_SLACK, self.max_bytes // 16)

    def fit(self, db: sqlite3.Connection, sizes: list[int]) -> list[bool]:
        """Which of ``sizes`` (a batch, in order) fit, evicting old entries as needed.

        The accepted sizes become this process's reservation (replacing any earlier one).
        """
        self.index.set_reservation(db, self._me, 0)
        budget = self.budget()
        used = self.index.meta(db, "total") + self.index.reserved(db)
        if used + sum(sizes) > budget and self.reclaim(db):
            used = self.index.meta(db, "total") + self.index.reserved(db)
        ok, mine = [], 0
        for size in sizes:
            if size <= budget and used + size > budget:
                used -= self.evict(db, used + size - budget)
            fits = used + size <= budget
            ok.append(fits)
            if fits:
                used += size
                mine += size
        self.index.set_reservation(db, self._me, mine)
        return ok

    def evict(self, db: sqlite3.Connection, need: int) -> int:
        """Evict least recently used entries until ``need`` bytes are freed (or none is left)."""
        freed = 0
        while freed < need:
            rows = self.index.oldest(db, 64)
            if not rows:
                break
            victims = []
            for name, size in rows:
                victims.append((name, size))
                freed += size
                if freed >= need:
                    break
            for name, _ in victims:  # files first, rows after: never a file without a row
                self._unlink(name)
            self.index.delete(db, victims)
            self.evictions += len(victims)
        return freed

    def shrink(self, db: sqlite3.Connection) -> None:
        """Enforce the bound now (on open: the bound may be smaller than last time)."""
        over = self.index.meta(db, "total") + self.index.reserved(db) - self.budget()
        if over > 0:
            self.evict(db, over)

    def reclaim(self, db: sqlite3.Connection) -> bool:
        """Delete the temp files and reservations of processes that died; True if any."""
        # temp files first, owners after: an owner file exists before any of its temp files,
        # so a temp file listed here whose owner is not listed next belongs to the dead
        temps = os.listdir(self._tmp_fd)
        dead = set(dead_owners(self._owners_dir, self._me))
        live = set(os.listdir(self._owners_dir)) - dead
        found = False
        for name in temps:
            owner = name.rsplit(".", 1)[0]
            if owner != self._me and owner not in live:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._tmp_fd)
                self.reclaimed += 1
                found = True
        for (owner,) in db.execute("SELECT owner FROM reservations").fetchall():
            if owner != self._me and owner not in live:
                self.index.set_reservation(db, owner, 0)
                found = True
        return found
