"""The blocking filesystem work of a LocalNode: one node root, run in a thread or inline.

Layout: the data object at ``<root>/<key>`` with its record in the xattr
``user.swarmstore.xxh3``; tombstones and hints under ``<root>/.swarmstore/`` (removed again
once empty). Compare-and-swap steps run under an exclusive ``flock`` of the root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from swarmstore.errors import ChecksumMismatch, ConfigError, NodeUnavailable
from swarmstore.storage._integrity import Record
from swarmstore.storage._keys import _TMP_MARK, hidden
from swarmstore.storage._node import (
    META,
    Outcome,
    Pending,
    Read,
    State,
    finishes_delete,
    may_replace,
    occupied,
    refusal,
    tomb_name,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from swarmstore.storage._integrity import Version

__all__ = ["XATTR", "Dir"]

XATTR = "user.swarmstore.xxh3"
#: a shadow that is a link of a staged fragment holds its header (key, record) here
SHADOW_XATTR = "user.swarmstore.shadow"
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP)


def _xattr(path: Path | int) -> bytes | None:
    try:
        return os.getxattr(path, XATTR)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return None
        raise


def _decoded(raw: bytes | None, key: str, *, tomb: bool) -> tuple[Record | None, str | None]:
    """(record, None) or (None, why it cannot be trusted)."""
    if raw is None:
        return None, ("tombstone without a record" if tomb else None)
    return _decode_cached(raw, key, tomb)


@functools.lru_cache(maxsize=16384)
def _decode_cached(raw: bytes, key: str, tomb: bool) -> tuple[Record | None, str | None]:
    """Decoding checks a 128-bit hash over the key and fields: cached, since zarr reads the
    same chunks again and again (a changed record is a different ``raw``)."""
    try:
        record = Record.decode(raw, key)
    except ValueError as e:
        return None, f"unreadable checksum record ({e})"
    if record.deleted != tomb:
        return None, "a tombstone record on a data object" if not tomb else "a data record"
    return record, None


class Dir:
    """The blocking filesystem work of one node root; run in a thread or inline."""

    def __init__(self, root: Path, name: str, fsync: bool) -> None:
        self.root = root
        self.base = os.fspath(root)  # string paths on the hot paths (Path joins cost µs)
        self.name = name
        self.fsync = fsync
        self.create = False

    # --- the root ------------------------------------------------------------------------
    def missing_root(self) -> bool:
        """True when the root is absent and may be created (reads see an empty node)."""
        if self.root.is_dir():
            return False
        if self.create:
            return True
        raise NodeUnavailable(
            f"{self.name}: node root {self.root} does not exist (an unmounted disk?); "
            "create it, or pass ReplicatedStore(..., create=True) to initialise a new store"
        )

    def ensure_root(self) -> None:
        if not self.missing_root():
            return
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.ensure_root()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    # --- reads ---------------------------------------------------------------------------
    def read(self, key: str, start: int, end: int | None) -> Read | None:
        path = f"{self.base}/{key}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            self.missing_root()
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ChecksumMismatch(f"{self.name}/{key}: not a regular file (a directory?)")
            record, why = _decoded(_xattr(fd), key, tomb=False)
            if why is not None:
                raise ChecksumMismatch(f"{self.name}/{key}: {why}")
            stop = st.st_size if end is None else min(end, st.st_size)
            n = max(0, stop - start)
            data = os.pread(fd, n, start) if n else b""
            while len(data) < n:  # short reads happen on some filesystems
                more = os.pread(fd, n - len(data), start + len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        return Read(data, record, st.st_size)

    def state(self, key: str, tomb: bool | None) -> State:
        size, record, corrupt = self._data_state(key)
        if tomb is False or (tomb is None and size is not None and corrupt is None):
            return State(size, record, None, tomb_known=False, corrupt=corrupt)
        t, why = self._tomb_state(key)
        if why is not None and (size is None or corrupt is not None):
            corrupt = corrupt or why
        return State(size, record, t, corrupt=corrupt)

    def _data_state(self, key: str) -> tuple[int | None, Record | None, str | None]:
        path = f"{self.base}/{key}"
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.missing_root()
            return None, None, None
        if not stat.S_ISREG(st.st_mode):
            return st.st_size, None, "not a regular file (a directory?)"
        try:
            raw = _xattr(path)
        except FileNotFoundError:  # replaced or removed in between
            return self._data_state(key)
        record, why = _decoded(raw, key, tomb=False)
        return st.st_size, record, why

    def _tomb_state(self, key: str) -> tuple[Record | None, str | None]:
        try:
            raw = _xattr(self.root / META / tomb_name(key))
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        return _decoded(raw, key, tomb=True)

    # --- writes --------------------------------------------------------------------------
    def prepare(self, key: str, data: bytes) -> Pending:
        self.ensure_root()
        seen = self.state(key, True)  # phase 1; the compare-and-swap happens at commit
        try:
            tmp = self._stage(self.root / key, data)
        except OSError as e:
            return Pending(key, data, seen, None, e)
        return Pending(key, data, seen, tmp)

    def _stage(self, path: Path, data: bytes) -> Path:
        for _ in range(3):
            try:
                return _write_temp(path.parent, data, self.fsync)
            except FileNotFoundError:
                if not self.root.is_dir():
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)
        return _write_temp(path.parent, data, self.fsync)

    def commit(self, p: Pending, record: Record, how: tuple[bool, bool, bool]) -> Outcome:
        if p.token is None:
            raise p.error or NodeUnavailable(f"{self.name}: nothing staged for {p.key!r}")
        tmp, path = Path(p.token), self.root / p.key
        try:
            os.setxattr(tmp, XATTR, record.encode(p.key).encode())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOTSUP:
                raise ConfigError(_NO_XATTR_HELP.format(path.parent)) from e
            raise
        with self.locked():
            outcome = self._swap(p, tmp, path, record, how)
        if outcome == "written" and self.fsync:
            _fsync_dir(path.parent)
        return outcome

    def _swap(
        self, p: Pending, tmp: Path, path: Path, record: Record, how: tuple[bool, bool, bool]
    ) -> Outcome:
        key, (create, force, heal) = p.key, how
        try:
            cur = self.state(key, True)
            if create and occupied(cur):
                return "exists"
            if not force and not may_replace(p.seen, cur, record.version, heal):
                return refusal(cur)
            os.rename(tmp, path)  # onto a directory: IsADirectoryError, a failed copy
        finally:
            tmp.unlink(missing_ok=True)
        if cur.tomb is not None and cur.tomb.version < record.version:
            self._drop_meta(tomb_name(key))
        return "written"

    def bury(self, key: str, tomb: Record, seen: State) -> Outcome:
        with self.locked():
            cur = self.state(key, True)
            if not finishes_delete(cur, tomb):
                if not may_replace(seen, cur, tomb.version):
                    return "superseded"
                # the tombstone first (see _write.py): a crash before the unlink leaves
                # data the tombstone outranks, never a node with neither
                self._put_meta(tomb_name(key), key.encode(), tomb.encode(key))
            if cur.size is not None:
                (self.root / key).unlink(missing_ok=True)  # a directory: IsADirectoryError
        return "written"

    def unbury(self, key: str, tomb: Record) -> None:
        with self.locked():
            t, _ = self._tomb_state(key)
            if t is not None and t.version == tomb.version:
                self._drop_meta(tomb_name(key))

    def remove(self, key: str, version: Version | None) -> bool:
        with self.locked():
            size, record, _ = self._data_state(key)
            if size is None:
                return False
            if version is not None and (record.version if record else None) != version:
                return False
            (self.root / key).unlink(missing_ok=True)
        return True

    # --- metadata area -------------------------------------------------------------------
    def _put_meta(self, name: str, body: bytes, record: str | None = None) -> None:
        path = self.root / META / name
        for _ in range(5):  # a concurrent _drop_meta may remove the empty area in between
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = _write_temp(path.parent, body, self.fsync)
            except (FileNotFoundError, FileExistsError):  # mkdir saw the area, then it went
                continue
            try:
                if record is not None:
                    os.setxattr(tmp, XATTR, record.encode())
                os.rename(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        raise NodeUnavailable(f"{self.name}: could not write {META}/{name}")

    def park(self, p: Pending, name: str, body: bytes) -> None:
        """A shadow as a second name of the staged file: one link, not the bytes written
        again (a file create costs a local disk far more than a link). ``body``'s header
        (what precedes ``p.data``) goes in an xattr; :meth:`meta_get` joins them again.
        Without the staged file, or where the xattr does not fit: the body, written."""
        cut = len(body) - len(p.data)
        if p.token is None or cut <= 0 or memoryview(body)[cut:] != p.data:
            return self._put_meta(name, body)
        path = self.root / META / name
        link = path.parent / f"{_TMP_MARK}{uuid.uuid4().hex}"
        for _ in range(5):  # a concurrent _drop_meta may remove the empty area in between
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.link(p.token, link)
                break
            except (FileNotFoundError, FileExistsError):
                if not os.path.exists(p.token):  # the staged file went: write the body
                    return self._put_meta(name, body)
        else:
            return self._put_meta(name, body)
        try:
            os.setxattr(link, SHADOW_XATTR, body[:cut])
            os.rename(link, path)
        except OSError as e:
            if e.errno not in (errno.E2BIG, errno.ENOSPC, errno.ENOTSUP, errno.ERANGE):
                raise
            return self._put_meta(name, body)  # the inode's xattrs are full
        finally:
            link.unlink(missing_ok=True)
        if self.fsync:
            _fsync_dir(path.parent)
        return None

    def _drop_meta(self, name: str) -> None:
        path = self.root / META / name
        if name.startswith("s/"):  # a linked shadow: its inode may be a fragment's too
            with contextlib.suppress(OSError):
                os.removexattr(path, SHADOW_XATTR)
        path.unlink(missing_ok=True)
        for d in (path.parent, self.root / META):  # the area exists only while it holds something
            try:
                d.rmdir()
            except OSError:
                break

    def meta_get(self, name: str) -> bytes | None:
        path = self.root / META / name
        try:
            body = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.missing_root()
            return None
        if name.startswith("s/"):  # a shadow parked as a link: its header is an xattr
            with contextlib.suppress(OSError):
                return os.getxattr(path, SHADOW_XATTR) + body
        return body

    def meta_list(self, area: str) -> list[str]:
        try:
            names = os.listdir(self.root / META / area)
        except (FileNotFoundError, NotADirectoryError):
            self.missing_root()
            return []
        return sorted(f"{area}/{n}" for n in names if not n.startswith(_TMP_MARK))

    # --- listing -------------------------------------------------------------------------
    def list_keys(self, prefix: str) -> list[str]:
        if self.missing_root():
            return []
        base = prefix.rstrip("/")
        keys: list[str] = []
        _walk(self.root / base if base else self.root, base, keys)
        if prefix and not prefix.endswith("/"):
            return [k for k in keys if k.startswith(prefix)]
        return keys

    def list_entries(self, prefix: str) -> list[str]:
        if self.missing_root():
            return []
        base = prefix.rstrip("/")
        try:
            names = os.listdir(self.root / base if base else self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not hidden(f"{base}/{n}" if base else n))

    def prune(self, prefix: str) -> None:
        base = prefix.rstrip("/")
        top = self.root / base if base else self.root
        if not top.is_dir():
            return
        for dirpath, _, _ in sorted(os.walk(top), key=lambda x: -len(x[0])):
            if (
                Path(dirpath) != self.root
                and META not in Path(dirpath).relative_to(self.root).parts
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _walk(top: Path, base: str, out: list[str]) -> None:
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        key = f"{base}/{e.name}" if base else e.name
        if hidden(key):
            continue
        if e.is_dir(follow_symlinks=False):
            _walk(Path(e.path), key, out)
        elif e.is_file():
            out.append(key)


def _write_temp(directory: Path, data: bytes, fsync: bool) -> Path:
    tmp = directory / f"{_TMP_MARK}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_NO_XATTR_HELP = (
    "{}: this filesystem does not support user extended attributes, which swarmstore uses "
    "to keep each file's checksum with it (use ext4, xfs, btrfs, tmpfs >= 6.6, or an s3:// node)"
)
