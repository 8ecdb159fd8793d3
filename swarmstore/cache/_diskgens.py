"""Generations of keys, kept in the data directory beside the values, never in the index.

A fill may be published only if its key was not invalidated since the fill's fetch began.
The record of invalidations must survive anything done to the SQLite index: an index
deleted or garbled under running processes can lose or resurrect its contents silently
(its journal is found by path), so this record lives in small files of its own:

- ``data/xxx/_gen`` (one per subdirectory of values): an epoch, then one line per key
  invalidated recently, its *generation token* (random, never reused). Invalidating a
  key writes a new token (temp file, then rename: readers see the old file or the new).
- ``data/_prefixes``: an epoch, then one line per prefix invalidation (``delete_dir``,
  ``clear``), in order, each with its token.

A fill's ticket is what these files say before the fetch (the subdirectory's epoch and
the key's token, the prefix file's epoch and last token). Publishing, under the directory
lock, compares the ticket with the files as they are then: any change of the key's
token or epoch, or a prefix invalidation since that covers the key, drops the fill. A file
that cannot be read back whole (its checksum line fails) counts as changed.

Tokens are compared for equality, never ordered, so no clock is involved. Lines older
than ``KEEP`` seconds of this host's monotonic clock are dropped when a file is
rewritten; a fill whose ticket is older than half of that is refused, so a dropped line
can never make a stale fill look current. Prefix lines are kept (up to ``MAX_PREFIXES``,
then the file starts a new epoch); each value file records the prefix file's last token
at its fill, so a reader drops a value file that a later prefix invalidation covers even
if the index missed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KEEP", "Gens", "Ticket"]

KEEP = 600.0  # seconds a key's token is remembered after its last invalidation
MAX_PREFIXES = 4096
_MISSING = "-"  # the epoch of a file that does not exist (yet)
_BROKEN = "!"  # the epoch of a file that cannot be read whole: matches nothing


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the generation files said when a fill's fetch began."""

    sub: str  # the key's subdirectory
    epoch: str  # its _gen file's epoch
    token: str | None  # the key's token there (None: not invalidated recently)
    prefixes: str  # "<epoch>:<last token>" of the prefix file
    taken: int  # time.monotonic_ns() when taken (to refuse very old tickets)


def subdir(stem: str) -> str:
    """The subdirectory of a key's files: the first 3 hex digits of its stem (4096 of them)."""
    return stem[:3]


def _write(tmp_dir_fd: int, tmp_name: str, dst_dir_fd: int, dst: str, lines: list[str]) -> None:
    body = "".join(line + "\n" for line in lines)
    text = body + f"sum {xxhash.xxh3_64_hexdigest(body.encode())}\n"
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=tmp_dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp_name, dst, src_dir_fd=tmp_dir_fd, dst_dir_fd=dst_dir_fd)


def _parse(raw: bytes) -> tuple[str, list[list[str]]]:
    """``(epoch, lines)`` of a generation file; ``(_BROKEN, [])`` if it fails its checksum."""
    body, _, tail = raw.rpartition(b"sum ")
    if not raw.endswith(b"\n") or tail.strip() != xxhash.xxh3_64_hexdigest(body).encode():
        return _BROKEN, []
    rows = [line.split(" ", 2) for line in body.decode(errors="replace").splitlines()]
    if not rows or len(rows[0]) != 2 or rows[0][0] != "epoch":
        return _BROKEN, []
    return rows[0][1], rows[1:]


def _read(path: str) -> tuple[str, list[list[str]]]:
    try:
        with open(path, "rb") as f:
            return _parse(f.read())
    except FileNotFoundError:
        return _MISSING, []
    except OSError:
        return _BROKEN, []


class Gens:
    """The generation files of one data directory (``data``: its path; fds for writes)."""

    def __init__(self, data: str, tmp_name: Callable[[], str]) -> None:
        self.data = data
        self._tmp_name = tmp_name
        self._prefix_cache: tuple[tuple[int, int, int], tuple[str, list[list[str]]]] | None = None

    # -- tickets (no lock) --------------------------------------------------------------

    def ticket(self, stem: str) -> Ticket:
        sub = subdir(stem)
        epoch, rows = _read(f"{self.data}/{sub}/_gen")
        token = next((r[1] for r in rows if len(r) == 3 and r[0] == stem), None)
        return Ticket(sub, epoch, token, self.prefix_mark(), time.monotonic_ns())

    def prefix_mark(self) -> str:
        """The prefix file's ``"<epoch>:<last token>"`` now (stored in each value file)."""
        epoch, rows = self._prefixes()
        return f"{epoch}:{rows[-1][1] if rows else _MISSING}"

    # -- checks (publishing: under the directory lock; reading: none) -------------------

    def current(self, stem: str, ns: str, key: str, ticket: Ticket) -> bool:
        """Whether nothing invalidated ``key`` since ``ticket`` was taken."""
        if (time.monotonic_ns() - ticket.taken) / 1e9 > KEEP / 2:
            return False
        epoch, rows = _read(f"{self.data}/{ticket.sub}/_gen")
        if epoch == _BROKEN or epoch != ticket.epoch:
            return False
        token = next((r[1] for r in rows if len(r) == 3 and r[0] == stem), None)
        return token == ticket.token and not self.covered(ns, key, ticket.prefixes)

    def covered(self, ns: str, key: str, mark: str) -> bool:
        """Whether a prefix invalidation after ``mark`` (a ``prefix_mark``) covers ``key``."""
        epoch, rows = self._prefixes()
        mark_epoch, _, last = mark.partition(":")
        if epoch == _BROKEN or epoch != mark_epoch:
            return True  # the file was reset, lost or damaged since: nothing is known
        after = rows
        for i, row in enumerate(rows):
            if row[1] == last:
                after = rows[i + 1 :]
                break
        mine = _ns_id(ns)
        for row in after:  # (if ``last`` was dropped, every line left is newer than it)
            if row[0] in (mine, "*") and key.startswith(json.loads(row[2])):
                return True
        return False

    def _prefixes(self) -> tuple[str, list[list[str]]]:
        path = f"{self.data}/_prefixes"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _MISSING, []
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._prefix_cache
        if cached is not None and cached[0] == ident:
            return cached[1]
        epoch, rows = _read(path)
        rows = [r for r in rows if len(r) == 3]
        self._prefix_cache = (ident, (epoch, rows))
        return epoch, rows

    # -- invalidation (under the directory lock) -----------------------------------------

    def bump(self, data_fd: int, tmp_fd: int, stem: str) -> None:
        """Give ``stem`` a new token (dropping lines older than ``KEEP``)."""
        sub = subdir(stem)
        epoch, rows = _read(f"{self.data}/{sub}/_gen")
        if epoch in (_MISSING, _BROKEN):
            epoch, rows = uuid.uuid4().hex, []
        now = time.monotonic_ns()
        keep = [r for r in rows if len(r) == 3 and r[0] != stem and now - int(r[2]) < KEEP * 1e9]
        lines = [f"epoch {epoch}", *(" ".join(r) for r in keep)]
        lines.append(f"{stem} {uuid.uuid4().hex} {now}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(sub, dir_fd=data_fd)
        _write(tmp_fd, self._tmp_name(), data_fd, f"{sub}/_gen", lines)

    def void(self, data_fd: int, tmp_fd: int, stem: str) -> None:
        """Invalidate one key (held lock): a new token, then its files deleted, found by
        name (so this holds whatever state the index is in)."""
        self.bump(data_fd, tmp_fd, stem)
        sub = subdir(stem)
        try:
            names = os.listdir(os.path.join(self.data, sub))
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(stem):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{sub}/{name}", dir_fd=data_fd)

    def bump_prefix(self, data_fd: int, tmp_fd: int, ns: str, prefix: str) -> None:
        """Record an invalidation of every key of ``ns`` (``"*"``: all) under ``prefix``."""
        epoch, rows = _read(f"{self.data}/_prefixes")
        rows = [r for r in rows if len(r) == 3]
        if epoch in (_MISSING, _BROKEN) or len(rows) >= MAX_PREFIXES:
            epoch, rows = uuid.uuid4().hex, []  # every older mark is void: values refetched
        lines = [f"epoch {epoch}", *(" ".join(r) for r in rows)]
        ns_id = "*" if ns == "*" else _ns_id(ns)
        lines.append(f"{ns_id} {uuid.uuid4().hex} {json.dumps(prefix, separators=(',', ':'))}")
        _write(tmp_fd, self._tmp_name(), data_fd, "_prefixes", lines)


def _ns_id(ns: str) -> str:
    return xxhash.xxh3_64_hexdigest(ns.encode())
