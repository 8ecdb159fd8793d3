"""Locks of the disk tier, all ``flock``: the kernel drops them when their holder dies.

- :class:`DirLock`: the directory lock; publishing, evicting and invalidating hold it, so
  "row committed, then file renamed in" and "file unlinked, then row deleted" never
  interleave across processes. It locks the ``data`` directory itself: deleting the
  index cannot break it, and a deleted ``data`` directory is seen by its inode.
- :class:`Owner`: each process using the directory holds a lock on its own owner file, so
  others tell a live filler from a dead one and reclaim a dead one's temp files at once.
- :class:`Claims`: single flight across processes. The first process to miss a key takes
  its claim (a lock file named after the entry); others wait for the claim, then find the
  value on disk. The holder unlinks the file before unlocking; a waiter that locked an
  unlinked file tries again. A waiter gives up after a timeout (a stopped holder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Claim", "Claims", "DirLock", "Owner", "dead_owners"]

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_O_LOCK = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class DirLock:
    """An exclusive lock on a directory (its fd), with a check that it is still there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, _O_DIR)
        self._ino = os.fstat(self.fd).st_ino
        self._local = threading.Lock()  # flock is per open file: threads need their own lock

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._local:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def is_current(self) -> bool:
        """Whether ``path`` is still the directory this lock holds (not deleted, replaced)."""
        try:
            return os.stat(self.path).st_ino == self._ino and os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Owner:
    """This process's (this tier instance's) liveness lock in ``owners_dir``."""

    def __init__(self, owners_dir: str) -> None:
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.dir = owners_dir
        self.fd = os.open(os.path.join(owners_dir, self.token), _O_LOCK, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, self.token))
            os.close(self.fd)
            self.fd = -1


def dead_owners(owners_dir: str, me: str) -> list[str]:
    """Tokens of owners whose process is gone (their lock is free). Unlinks their files."""
    dead = []
    for token in os.listdir(owners_dir):
        if token == me:
            continue
        path = os.path.join(owners_dir, token)
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        dead.append(token)
    return dead


class Claim:
    """The right to fetch one entry for every process sharing the directory."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Let waiters go (idempotent; any thread)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(fd)


class Claims:
    """Claims on entries by name, in ``claims_dir``."""

    def __init__(self, claims_dir: str) -> None:
        self.dir = claims_dir

    def try_take(self, name: str) -> Claim | None:
        """The claim on ``name`` if nobody holds it, else None (never blocks)."""
        path = os.path.join(self.dir, name)
        for _ in range(8):
            fd = os.open(path, _O_LOCK, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Claim(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)  # the last holder unlinked it after we opened it: try again
        return None


class Backoff:
    """Delays between polls of a claim: 1 ms doubling to 25 ms, until a deadline."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = 0.001

    def next(self) -> float | None:
        """Seconds to wait before the next poll, or None when the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        delay, self.delay = self.delay, min(self.delay * 2, 0.025)
        return min(delay, left)
