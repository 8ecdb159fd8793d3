"""Node backends: local directory (xattr records), memory, S3 (object metadata records)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from swarmstore.errors import ChecksumMismatch, ConfigError, NodeUnavailable
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import _TMP_MARK, Node, Pending, check_key

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["LocalNode", "MemoryNode", "S3Node"]

XATTR = "user.swarmstore.xxh3"
S3_META = "swarmstore-xxh3"


def _decode(raw: str | bytes | None, where: str) -> Record | None:
    if raw is None:
        return None
    try:
        return Record.decode(raw)
    except ValueError as e:
        raise ChecksumMismatch(f"{where}: unreadable checksum record ({e})") from e


# --- local directory ---------------------------------------------------------------------


def _local_read(path: Path, start: int, end: int | None) -> tuple[bytes, Record | None, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        size = os.fstat(fd).st_size
        try:
            raw: bytes | None = os.getxattr(fd, XATTR)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
            raw = None
        stop = size if end is None else min(end, size)
        n = max(0, stop - start)
        data = os.pread(fd, n, start) if n else b""
        while len(data) < n:  # short reads happen on some filesystems
            more = os.pread(fd, n - len(data), start + len(data))
            if not more:
                break
            data += more
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)
    return data, _decode(raw, str(path)), size


def _local_head(path: Path) -> tuple[int, Record | None] | None:
    try:
        size = os.stat(path).st_size
        raw: bytes | None = os.getxattr(path, XATTR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
        raw = None
    if os.path.isdir(path):
        return None
    return size, _decode(raw, str(path))


def _local_prepare(path: Path, data: bytes, record: Record, fsync: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_MARK}{uuid.uuid4().hex}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            os.setxattr(fd, XATTR, record.encode().encode())
        except OSError as e:
            if e.errno == errno.ENOTSUP:
                raise ConfigError(
                    f"{path.parent}: this filesystem does not support user extended attributes, "
                    "which swarmstore uses to keep each file's checksum with it "
                    "(use ext4, xfs, btrfs, tmpfs >= 6.6, or an s3:// node)"
                ) from e
            raise
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _local_commit(tmp: Path, path: Path, fsync: bool) -> None:
    os.replace(tmp, path)
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _local_create(path: Path, data: bytes, record: Record, fsync: bool) -> bool:
    tmp = _local_prepare(path, data, record, fsync)
    try:
        os.link(tmp, path)  # fails if the name exists: an atomic conditional create
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


class LocalNode(Node):
    """A directory. Each file's checksum record is its ``user.swarmstore.xxh3`` xattr.

    Writes go to a temp file in the target directory (xattr set on it), then one
    ``rename`` publishes bytes and checksum together; a kill -9 at any moment leaves
    either the old file or the new one. ``fsync=True`` adds power-loss durability.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
        fsync: bool = False,
    ) -> None:
        self.root = Path(root)
        super().__init__(
            name or f"file://{self.root}", weight=weight, zone=zone, host=host or _hostname()
        )
        self.fsync = fsync
        self.store = LocalStore(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def read(self, key: str, start: int = 0, end: int | None = None):
        return await asyncio.to_thread(_local_read, self._path(key), start, end)

    async def head(self, key: str):
        return await asyncio.to_thread(_local_head, self._path(key))

    async def prepare(self, key: str, data: bytes, record: Record) -> Pending:
        tmp = await asyncio.to_thread(_local_prepare, self._path(key), data, record, self.fsync)
        return Pending(key, data, record, tmp)

    async def commit(self, pending: Pending) -> None:
        if self.fsync:
            await asyncio.to_thread(_local_commit, pending.token, self._path(pending.key), True)
        else:  # one rename: a metadata syscall of microseconds, not worth a thread hop
            _local_commit(pending.token, self._path(pending.key), False)

    async def abort(self, pending: Pending) -> None:
        if pending.token is not None:
            await asyncio.to_thread(Path(pending.token).unlink, missing_ok=True)

    async def write(self, key: str, data: bytes, record: Record) -> None:
        path = self._path(key)

        def _write() -> None:
            _local_commit(_local_prepare(path, data, record, self.fsync), path, self.fsync)

        await asyncio.to_thread(_write)

    async def create(self, key: str, data: bytes, record: Record) -> bool:
        return await asyncio.to_thread(_local_create, self._path(key), data, record, self.fsync)

    async def delete(self, key: str) -> None:
        await self.store.delete(check_key(key))


def _hostname() -> str:
    return socket.gethostname()


# --- memory -------------------------------------------------------------------------------

_NAMED: dict[str, tuple[dict[str, Any], dict[str, tuple[Any, Record]]]] = {}


class MemoryNode(Node):
    """An in-process dict (a zarr ``MemoryStore``); records live in a dict beside it.

    A record counts only while the stored buffer is the very object it was written
    with, so a value written to the MemoryStore behind swarmstore's back reads as
    unrecorded rather than corrupt.
    """

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
        records: dict[str, tuple[Any, Record]] | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        super().__init__(
            name or f"memory://{id(self.store._store_dict):x}",
            weight=weight,
            zone=zone,
            host=host or _hostname(),
        )
        self.records: dict[str, tuple[Any, Record]] = records if records is not None else {}
        self._registered: str | None = None

    @classmethod
    def named(cls, label: str, **kwargs: Any) -> MemoryNode:
        """The process-wide memory node called ``label`` (``memory://label``)."""
        data, records = _NAMED.setdefault(label, ({}, {}))
        kwargs.setdefault("name", f"memory://{label}")
        node = cls(MemoryStore(data), records=records, **kwargs)
        node._registered = label
        return node

    def __reduce__(self) -> Any:
        if self._registered is not None:
            attrs = {"name": self.name, "weight": self.weight, "zone": self.zone}
            return (_named_node, (self._registered, attrs))
        return super().__reduce__()

    def _get(self, key: str) -> tuple[bytes, Record | None] | None:
        buf = self.store._store_dict.get(check_key(key))
        if buf is None:
            return None
        entry = self.records.get(key)
        record = entry[1] if entry is not None and entry[0] is buf else None
        return buf.to_bytes(), record

    async def read(self, key: str, start: int = 0, end: int | None = None):
        got = self._get(key)
        if got is None:
            return None
        data, record = got
        return data[start:end], record, len(data)

    async def head(self, key: str):
        got = self._get(key)
        return None if got is None else (len(got[0]), got[1])

    async def prepare(self, key: str, data: bytes, record: Record) -> Pending:
        return Pending(check_key(key), bytes(data), record)

    async def commit(self, pending: Pending) -> None:
        buf = default_buffer_prototype().buffer.from_bytes(pending.data)
        self.store._store_dict[pending.key] = buf
        self.records[pending.key] = (buf, pending.record)

    async def abort(self, pending: Pending) -> None:
        return None

    async def create(self, key: str, data: bytes, record: Record) -> bool:
        if check_key(key) in self.store._store_dict:
            return False
        await self.commit(Pending(key, bytes(data), record))  # no await before: atomic
        return True

    async def delete(self, key: str) -> None:
        self.store._store_dict.pop(check_key(key), None)
        self.records.pop(key, None)


def _endpoint(fs: Any) -> Any:
    options = getattr(fs, "storage_options", {}) or {}
    return options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")


def _named_node(name: str, attrs: dict[str, Any]) -> MemoryNode:
    return MemoryNode.named(name, **attrs)


# --- S3 -------------------------------------------------------------------------------------


class S3Node(Node):
    """An S3 prefix through s3fs. The record is the object's ``x-amz-meta-swarmstore-xxh3``.

    The checksum rides in the PUT that writes the object and comes back in the headers
    of the GET that reads it: zero extra requests per read or write.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        name: str | None = None,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        if not getattr(fs, "asynchronous", False):
            raise ConfigError("S3 nodes need an asynchronous s3fs filesystem")
        self.fs = fs
        self.path = path.strip("/")
        super().__init__(name or f"s3://{self.path}", weight=weight, zone=zone, host=host)
        self.store = FsspecStore(fs, path=self.path)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, S3Node)
            and (self.name, self.path, self.weight, self.zone)
            == (other.name, other.path, other.weight, other.zone)
            and _endpoint(self.fs) == _endpoint(other.fs)
        )

    def __hash__(self) -> int:
        return hash(self.name)

    def _loc(self, key: str) -> tuple[str, str]:
        bucket, _, prefix = self.path.partition("/")
        key = check_key(key)
        return bucket, f"{prefix}/{key}" if prefix else key

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return await self.fs._call_s3(method, **kwargs)
        except (FileNotFoundError, FileExistsError, PermissionError):
            raise
        except OSError as e:
            raise NodeUnavailable(f"{self.name}: {method} failed: {e}") from e
        except Exception as e:  # botocore connection errors are not OSErrors
            if type(e).__module__.startswith(("botocore", "aiobotocore", "aiohttp")):
                raise NodeUnavailable(f"{self.name}: {method} failed: {e}") from e
            raise

    async def read(self, key: str, start: int = 0, end: int | None = None):
        bucket, k = self._loc(key)
        kwargs: dict[str, Any] = {}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = await self._call("get_object", Bucket=bucket, Key=k, **kwargs)
        except FileNotFoundError:
            return None
        try:
            data = await resp["Body"].read()
        except Exception as e:
            raise NodeUnavailable(f"{self.name}: reading {key!r} failed: {e}") from e
        finally:
            resp["Body"].close()
        size = resp.get("ContentLength", len(data))
        content_range = resp.get("ContentRange")
        if content_range and "/" in content_range:
            size = int(content_range.rsplit("/", 1)[1])
        record = _decode((resp.get("Metadata") or {}).get(S3_META), f"{self.name}/{key}")
        return data, record, size

    async def head(self, key: str):
        bucket, k = self._loc(key)
        try:
            resp = await self._call("head_object", Bucket=bucket, Key=k)
        except FileNotFoundError:
            return None
        record = _decode((resp.get("Metadata") or {}).get(S3_META), f"{self.name}/{key}")
        return int(resp["ContentLength"]), record

    async def prepare(self, key: str, data: bytes, record: Record) -> Pending:
        self._loc(key)
        return Pending(key, bytes(data), record)

    async def commit(self, pending: Pending) -> None:
        bucket, k = self._loc(pending.key)
        await self._call(
            "put_object",
            Bucket=bucket,
            Key=k,
            Body=pending.data,
            Metadata={S3_META: pending.record.encode()},
        )
        self.fs.invalidate_cache(f"{bucket}/{k}")

    async def abort(self, pending: Pending) -> None:
        return None

    async def create(self, key: str, data: bytes, record: Record) -> bool:
        """One ``PutObject`` with ``IfNoneMatch="*"``: S3 refuses it if the key exists."""
        bucket, k = self._loc(key)
        try:
            await self._call(
                "put_object",
                Bucket=bucket,
                Key=k,
                Body=bytes(data),
                Metadata={S3_META: record.encode()},
                IfNoneMatch="*",
            )
        except FileExistsError:
            return False
        finally:
            self.fs.invalidate_cache(f"{bucket}/{k}")
        return True

    async def list_prefix(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache(self.path)  # other processes write too: list afresh
        return await super().list_prefix(prefix)

    async def list_dir(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache(self.path)
        return await super().list_dir(prefix)

    async def delete(self, key: str) -> None:
        bucket, k = self._loc(key)
        try:
            await self._call("delete_object", Bucket=bucket, Key=k)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(f"{bucket}/{k}")

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        """Close the s3fs client's HTTP session (on the loop that opened it)."""
        client = getattr(self.fs, "_s3", None)
        if client is not None:
            await client.close()
            self.fs._s3 = None
