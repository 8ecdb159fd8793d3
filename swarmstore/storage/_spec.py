"""Building nodes from what users pass: URLs, zarr stores, :class:`NodeSpec`, nodes."""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Hashable

    from swarmstore.storage._node import Node

__all__ = ["FSSPEC_SCHEMES", "NodeSpec", "node_from", "s3_config_kwargs"]

#: object stores and read-only HTTP reached through fsspec as generic nodes (``_generic``);
#: the package behind each (gcsfs, adlfs, aiohttp) must be installed
FSSPEC_SCHEMES = ("gs", "gcs", "az", "abfs", "abfss", "http", "https")
#: obstore stores that carry attributes: zarr ObjectStores over them become ObstoreNodes
_OBSTORE_KINDS = ("S3Store", "GCSStore", "AzureStore", "MemoryStore")


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

    URLs: ``file:///path`` (or a plain absolute path), ``memory://name``,
    ``s3://``, ``gs://``, ``az://`` ``bucket/prefix`` through obstore or fsspec as
    ``storage.object-client`` says (obstore: an :class:`ObstoreNode`, s3fs-style
    ``storage_options`` translated; s3fs: an S3 node, botocore's timeouts and retries
    defaulting to :func:`s3_config_kwargs`), and :data:`FSSPEC_SCHEMES` through fsspec
    (``http(s)://`` read-only). Stores: ``LocalStore``, ``MemoryStore``, an s3fs-backed
    ``FsspecStore`` and a zarr ``ObjectStore`` over obstore's S3, GCS, Azure or memory
    store get their own nodes; any other zarr store (a ``WrapperStore`` chain, an
    ``FsspecStore`` over another filesystem, zarr's ``ObjectStore`` over another obstore
    store, a user's store) becomes a :class:`~swarmstore.storage.StoreNode`; an object
    with an ``as_node(**attrs)`` method builds its own (``swarmstore.testing.FaultyStore``).
    """
    from swarmstore.storage._node import Node

    if isinstance(spec, Node):
        return spec
    if isinstance(spec, NodeSpec):
        attrs = {"name": spec.name, "weight": spec.weight, "zone": spec.zone, "host": spec.host}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        kwargs["storage_options"] = spec.storage_options or kwargs.get("storage_options")
        return node_from(spec.target, **attrs, **kwargs)
    if isinstance(spec, dict):
        try:
            return node_from(NodeSpec(**spec), **kwargs)
        except TypeError as e:
            raise ConfigError(f"bad node description {spec!r}: {e}") from e
    storage_options = kwargs.pop("storage_options", None) or {}
    if hasattr(spec, "as_node"):
        return spec.as_node(**kwargs)  # type: ignore[no-any-return]
    if isinstance(spec, str):
        return _node_from_url(spec, storage_options, kwargs)
    return _node_from_store(spec, kwargs)


def _node_from_store(spec: Any, kwargs: dict[str, Any]) -> Node:
    from zarr.storage import FsspecStore, LocalStore, MemoryStore

    from swarmstore.storage._local import LocalNode
    from swarmstore.storage._memory import MemoryNode
    from swarmstore.storage._s3 import S3Node

    if isinstance(spec, LocalStore):
        return LocalNode(spec.root, **kwargs)
    if isinstance(spec, MemoryStore):
        return MemoryNode(spec, **kwargs)
    if isinstance(spec, FsspecStore):
        protocol = spec.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        if "s3" in protocols:
            return S3Node(spec.fs, spec.path, **kwargs)
    if type(getattr(spec, "store", None)).__name__ in _OBSTORE_KINDS:
        from zarr.storage import ObjectStore

        if isinstance(spec, ObjectStore):
            from swarmstore.storage._obstore import ObstoreNode

            return ObstoreNode(spec, **kwargs)
    return _generic_node(spec, kwargs)


def _generic_node(spec: Any, kwargs: dict[str, Any]) -> Node:
    """Any other zarr store: records in sidecars (``_generic``)."""
    from zarr.abc.store import Store

    from swarmstore.storage._generic import StoreNode

    if not isinstance(spec, Store):
        raise ConfigError(
            f"cannot use {spec!r} as a storage node: give a URL (file://, memory://, s3://, "
            "or any fsspec protocol) or a zarr store"
        )
    if type(spec).__name__ in ("ReplicatedStore", "TieredStore"):
        raise ConfigError(
            f"cannot use a {type(spec).__name__} as a storage node: give the stores beneath it"
        )
    return StoreNode(spec, **kwargs)


def _node_from_url(url: str, storage_options: dict[str, Any], kwargs: dict[str, Any]) -> Node:
    from swarmstore.storage._local import LocalNode
    from swarmstore.storage._memory import MemoryNode
    from swarmstore.storage._obstore_io import OBSTORE_SCHEMES, client_for, store_from_url
    from swarmstore.storage._s3 import S3Node

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
    if scheme in OBSTORE_SCHEMES and client_for(scheme, storage_options) == "obstore":
        from swarmstore.storage._obstore import ObstoreNode

        return ObstoreNode(store_from_url(url, storage_options), **kwargs)
    if scheme in ("s3", "s3a"):
        bucket = rest.strip("/")
        if not bucket:
            raise ConfigError(f"node URL {url!r}: s3:// needs a bucket")
        import s3fs

        options = copy.deepcopy(storage_options)
        options["config_kwargs"] = {**s3_config_kwargs(), **options.get("config_kwargs", {})}
        try:
            fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **options)
        except TypeError as e:
            raise ConfigError(f"node URL {url!r}: bad storage_options ({e})") from e
        return S3Node(fs, bucket, **kwargs)
    return _fsspec_node(url, scheme, storage_options, kwargs)


def _fsspec_node(
    url: str, scheme: str, storage_options: dict[str, Any], kwargs: dict[str, Any]
) -> Node:
    """A node over any other fsspec protocol (gs://, az://, abfs://, http(s):// read-only)."""
    from zarr.storage import FsspecStore

    from swarmstore.storage._generic import StoreNode

    if scheme not in FSSPEC_SCHEMES:
        known = ", ".join(["file", "memory", "s3", *FSSPEC_SCHEMES])
        raise ConfigError(f"node URL {url!r}: unsupported scheme {scheme!r} ({known})")
    read_only = scheme in ("http", "https")
    try:
        store = FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)
    except ImportError as e:
        raise ConfigError(f"node URL {url!r}: {scheme}:// needs a package ({e})") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"node URL {url!r}: {e}") from None
    return StoreNode(store, **kwargs)


def s3_config_kwargs() -> dict[str, Any]:
    """botocore ``Config`` settings for the S3 nodes swarmstore builds from URLs: the
    network room's :func:`swarmstore.network.s3_config_kwargs` (pool sized from the QoS
    lanes, ``network.s3-connect-timeout`` / ``network.s3-read-timeout``, no botocore retry;
    ``docs/storage.md`` says why). User ``storage_options["config_kwargs"]`` win."""
    from swarmstore.network import s3_config_kwargs as network_kwargs

    return network_kwargs()
