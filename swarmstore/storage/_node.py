"""Storage nodes: one backing location that holds whole replicas, with their checksums.

A node stores under each zarr key exactly the bytes zarr wrote, so a single node opens
with plain zarr, and keeps each object's checksum :class:`Record` *with* the object
(xattr, S3 user metadata): written in the same atomic step, read in the same request.

Writes are two-phase so a failed quorum changes nothing: ``prepare`` stages the bytes
(a temp file, or nothing for S3), ``commit`` makes them visible (rename, or the PUT).
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmstore.errors import ConfigError, InvalidKeyError

if TYPE_CHECKING:
    from collections.abc import Hashable

    from zarr.abc.store import Store

    from swarmstore.storage._integrity import Record

__all__ = ["Node", "NodeSpec", "Pending", "check_key", "node_from"]

_TMP_MARK = ".swarm-tmp-"


def check_key(key: str, *, prefix: bool = False) -> str:
    """Refuse keys that could escape a node's root; return the key unchanged.

    Refused: absolute paths, ``..`` or ``.`` components, empty components, backslashes,
    NUL and other control characters. ``prefix=True`` also accepts ``""`` and a
    trailing ``/`` (listing prefixes).
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"store keys are str, got {type(key).__name__}")
    if prefix:
        if key == "":
            return key
        body = key[:-1] if key.endswith("/") else key
    else:
        body = key
    if not body:
        raise InvalidKeyError("empty store key")
    if body.startswith("/") or "\\" in body or any(ord(c) < 32 for c in body):
        raise InvalidKeyError(f"store key {key!r} is absolute or holds a forbidden character")
    parts = body.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKeyError(f"store key {key!r} has an empty, '.' or '..' component")
    if any(p.startswith(_TMP_MARK) for p in parts):
        raise InvalidKeyError(f"store key {key!r} uses the reserved prefix {_TMP_MARK!r}")
    return key


@dataclass
class Pending:
    """A staged write: what ``prepare`` returned, for ``commit`` or ``abort``."""

    key: str
    data: bytes
    record: Record
    token: Any = None


class Node(ABC):
    """One replica location. Subclasses implement the backend-specific operations."""

    def __init__(
        self,
        name: str,
        *,
        weight: float = 1.0,
        zone: Hashable | None = None,
        host: str | None = None,
    ) -> None:
        self.name = name
        self.weight = weight
        self.zone = zone
        self.host = host
        self.store: Store  # a plain zarr view of the node, used for listing

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Node)
            and (self.name, self.weight, self.zone) == (other.name, other.weight, other.zone)
            and self.store == other.store
        )

    def __hash__(self) -> int:
        return hash(self.name)

    # --- reads ---------------------------------------------------------------------------
    @abstractmethod
    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> tuple[bytes, Record | None, int] | None:
        """Bytes ``[start, end)`` of ``key`` (``end=None``: to the end), its record, and its size.

        None when the key is absent. The record is None for an object without one
        (written by something other than swarmstore).
        """

    @abstractmethod
    async def head(self, key: str) -> tuple[int, Record | None] | None:
        """``(size, record)`` of ``key`` without its bytes; None when absent."""

    # --- writes --------------------------------------------------------------------------
    @abstractmethod
    async def prepare(self, key: str, data: bytes, record: Record) -> Pending:
        """Stage a write; nothing becomes visible before :meth:`commit`."""

    @abstractmethod
    async def commit(self, pending: Pending) -> None:
        """Make a staged write visible atomically (bytes and record together)."""

    @abstractmethod
    async def abort(self, pending: Pending) -> None:
        """Drop a staged write; must not raise for a write that was never staged."""

    async def write(self, key: str, data: bytes, record: Record) -> None:
        """Prepare and commit in one go."""
        await self.commit(await self.prepare(key, data, record))

    async def create(self, key: str, data: bytes, record: Record) -> bool:
        """Write ``key`` only if absent; True if this call created it.

        Backends override this with an atomic conditional create; this fallback checks
        then writes (racy between writers).
        """
        if await self.head(key) is not None:
            return False
        await self.write(key, data, record)
        return True

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are fine."""

    # --- listing, through the node's plain zarr view ----------------------------------------
    async def list_prefix(self, prefix: str) -> list[str]:
        return [k async for k in self.store.list_prefix(prefix) if _TMP_MARK not in k]

    async def list_dir(self, prefix: str) -> list[str]:
        return [k async for k in self.store.list_dir(prefix) if not k.startswith(_TMP_MARK)]

    async def delete_dir(self, prefix: str) -> None:
        await self.store.delete_dir(prefix)

    async def ping(self) -> None:
        """Cheap reachability check; raises when the node is down."""
        await self.head("zarr.json")

    def close(self) -> None:
        self.store.close()

    async def aclose(self) -> None:
        """Release connections; the node stays usable (they reopen on demand)."""
        return None


@dataclass(frozen=True)
class NodeSpec:
    """A node description: a URL or zarr store plus placement attributes.

    ``zone`` is the failure domain (replicas go to distinct zones while there are
    enough), ``weight`` scales the share of keys the node receives, ``host`` lets the
    transfer router prefer nodes on the reader's machine.
    """

    target: Any
    name: str | None = None
    weight: float = 1.0
    zone: Hashable | None = None
    host: str | None = None
    storage_options: dict[str, Any] | None = None


def node_from(spec: Any, **kwargs: Any) -> Node:
    """Build a :class:`Node` from a URL, a zarr store, a :class:`NodeSpec` or a Node.

    URLs: ``file:///path`` (or a plain path), ``memory://name``, ``s3://bucket/prefix``
    (``storage_options`` are passed to s3fs). Stores: ``LocalStore``, ``MemoryStore``,
    an s3fs-backed ``FsspecStore``, or any object with an ``as_node(**attrs)`` method
    (``swarmstore.testing.FaultyStore``).
    """
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, NodeSpec):
        attrs = {"name": spec.name, "weight": spec.weight, "zone": spec.zone, "host": spec.host}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        kwargs["storage_options"] = spec.storage_options or kwargs.get("storage_options")
        return node_from(spec.target, **attrs, **kwargs)
    if isinstance(spec, dict):
        return node_from(NodeSpec(**spec), **kwargs)
    storage_options = kwargs.pop("storage_options", None) or {}
    if hasattr(spec, "as_node"):
        return spec.as_node(**kwargs)  # type: ignore[no-any-return]
    from swarmstore.storage._backends import LocalNode, MemoryNode, S3Node

    if isinstance(spec, str):
        return _node_from_url(spec, storage_options, kwargs)
    from zarr.storage import FsspecStore, LocalStore, MemoryStore

    if isinstance(spec, LocalStore):
        return LocalNode(spec.root, **kwargs)
    if isinstance(spec, MemoryStore):
        return MemoryNode(spec, **kwargs)
    if isinstance(spec, FsspecStore):
        protocol = spec.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        if "s3" in protocols:
            return S3Node(spec.fs, spec.path, **kwargs)
    raise ConfigError(
        f"cannot use {spec!r} as a storage node: give a file://, memory:// or s3:// URL, "
        "a LocalStore, MemoryStore or s3fs FsspecStore"
    )


def _node_from_url(url: str, storage_options: dict[str, Any], kwargs: dict[str, Any]) -> Node:
    from swarmstore.storage._backends import LocalNode, MemoryNode, S3Node

    if not url:
        raise ConfigError("empty node URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", url
    if scheme == "file":
        if not rest.startswith("/"):
            raise ConfigError(f"node URL {url!r}: file paths must be absolute")
        return LocalNode(posixpath.normpath(rest), **kwargs)
    if scheme == "memory":
        if not rest:
            raise ConfigError(f"node URL {url!r}: memory:// needs a name")
        return MemoryNode.named(rest, **kwargs)
    if scheme in ("s3", "s3a"):
        bucket = rest.strip("/")
        if not bucket:
            raise ConfigError(f"node URL {url!r}: s3:// needs a bucket")
        import s3fs

        fs = s3fs.S3FileSystem(asynchronous=True, **storage_options)
        return S3Node(fs, bucket, **kwargs)
    raise ConfigError(f"node URL {url!r}: unsupported scheme {scheme!r} (file, memory, s3)")
