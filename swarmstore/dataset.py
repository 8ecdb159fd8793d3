"""Open Zarr data through the tiered cache, as zarr arrays or as chunk-affine dask arrays.

``open_array(url)`` resolves a URL (or a list of node URLs: a ReplicatedStore) to a store,
puts the process's shared :class:`~swarmstore.cache.TieredStore` in front of it and opens
the array. ``to_dask(array)`` (or ``open_array(..., dask=True)``) makes a dask array with
one task per storage object (shard, or chunk when unsharded), each annotated
``swarm={"chunk": "<path>/<chunk key>"}``: SwarmPlugin sends every such task to the
worker that rendezvous hashing picks for its chunk, so repeated passes over the data hit
the same workers' caches. On a worker each task reads through that worker's shared cache
(:func:`~swarmstore.cache.worker_cache`), never through a cache pickled from the client.
"""

from __future__ import annotations

import itertools
import logging
import threading
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import zarr
from dask.base import tokenize
from zarr.abc.store import Store

from swarmstore.cache import TieredStore, store_identity
from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "AffinityWarning",
    "ChunkReader",
    "affinity_config",
    "check_affinity",
    "open_array",
    "open_group",
    "resolve_store",
    "to_dask",
]

logger = logging.getLogger(__name__)

READ_PREFIX = "swarmstore-read-"

type CacheLike = bool | TieredStore | dict[str, Any] | None


class AffinityWarning(UserWarning):
    """Graph optimisation dropped the chunk-affinity annotations of some read tasks."""


def resolve_store(
    url_or_store: Any,
    *,
    storage_options: dict[str, Any] | None = None,
    read_only: bool = False,
    replicas: int | None = None,
) -> Store:
    """A zarr store for a store, a path, a URL, or a list of node URLs (ReplicatedStore).

    Every argument is honoured or refused: ``replicas`` applies to a list of node URLs,
    ``storage_options`` to remote URLs and node lists; given elsewhere they raise
    :class:`~swarmstore.errors.ConfigError` rather than being dropped.
    """
    if isinstance(url_or_store, Store):
        if replicas is not None or storage_options is not None:
            raise ConfigError(
                "replicas= and storage_options= apply to URLs; this is already a store "
                f"({type(url_or_store).__name__}): configure it directly"
            )
        return url_or_store
    if replicas is not None and not isinstance(url_or_store, (list, tuple)):
        raise ConfigError(
            f"replicas={replicas!r} applies to a list of node URLs, not to {url_or_store!r}"
        )
    if isinstance(url_or_store, (list, tuple)):
        from swarmstore import config
        from swarmstore.storage import ReplicatedStore

        replicas = config.value("storage.replicas", replicas)

        return ReplicatedStore(
            list(url_or_store),
            replicas=replicas,
            read_only=read_only,
            storage_options=storage_options,
        )
    url = str(url_or_store)
    if "://" not in url or url.startswith("file://"):
        from zarr.storage import LocalStore

        if storage_options is not None:
            raise ConfigError(f"storage_options= applies to remote URLs; {url!r} is local")

        return LocalStore(url.removeprefix("file://"), read_only=read_only)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)


def _with_cache(backing: Store, cache: CacheLike) -> Store:
    if cache is None or cache is False:
        return backing
    if isinstance(cache, TieredStore):
        return cache
    if isinstance(backing, TieredStore):
        return backing
    if isinstance(cache, dict):
        return TieredStore(backing, **cache)
    from swarmstore.cache import worker_cache

    return worker_cache(backing)


def open_array(
    url_or_store: Any,
    *,
    path: str = "",
    mode: str = "r",
    cache: CacheLike = True,
    storage_options: dict[str, Any] | None = None,
    replicas: int | None = None,
    dask: bool = False,
    chunks: Any = None,
    **kwargs: Any,
) -> Any:
    """Open a Zarr array reading through the tiered cache.

    Parameters
    ----------
    url_or_store
        A zarr store, a local path, a URL (``file://``, ``s3://bucket/prefix``, any fsspec
        protocol) or a list of node URLs (a ReplicatedStore over them).
    cache
        True: this process's shared cache (the worker's, on a Dask worker); a dict: a new
        ``TieredStore(backing, **cache)``; a TieredStore: that one; False: no cache.
    replicas
        Copies per key when ``url_or_store`` is a list of node URLs (default:
        ``swarmstore.storage.replicas``); refused for anything else.
    dask
        Return :func:`to_dask` of the array (``chunks`` passes through).
    **kwargs
        Passed to ``zarr.open_array``.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> path = tempfile.mkdtemp()
    >>> zarr.create_array(path, shape=(4,), chunks=(2,), dtype="i4")[:] = np.arange(4)
    >>> open_array(path)[:]
    array([0, 1, 2, 3], dtype=int32)
    >>> with affinity_config():  # keep the chunk annotations through optimisation
    ...     open_array(path, dask=True).sum().compute(scheduler="sync")
    np.int64(6)
    """
    backing = resolve_store(
        url_or_store, storage_options=storage_options, read_only=mode == "r", replicas=replicas
    )
    store = _with_cache(backing, cache)
    array = zarr.open_array(store, path=path, mode=mode, **kwargs)  # type: ignore[arg-type]
    return to_dask(array, chunks=chunks) if dask else array


def open_group(
    url_or_store: Any,
    *,
    path: str = "",
    mode: str = "r",
    cache: CacheLike = True,
    storage_options: dict[str, Any] | None = None,
    replicas: int | None = None,
    **kwargs: Any,
) -> zarr.Group:
    """Open a Zarr group reading through the tiered cache (arguments as :func:`open_array`)."""
    backing = resolve_store(
        url_or_store, storage_options=storage_options, read_only=mode == "r", replicas=replicas
    )
    store = _with_cache(backing, cache)
    return zarr.open_group(store, path=path, mode=mode, **kwargs)  # type: ignore[arg-type]


class ChunkReader:
    """Read one block of a zarr array; the callable inside every read task of :func:`to_dask`.

    It pickles as the backing store, the array path and metadata: on a worker it reads via
    ``worker_cache(backing)`` (when ``cached``), so all tasks there share one cache. In the
    process that made it, it keeps using the store it was given (say, your TieredStore).
    The array metadata travels with the task, so no task re-reads ``zarr.json``.
    """

    def __init__(
        self,
        backing: Store,
        path: str,
        metadata: dict[str, Any],
        cached: bool,
        local: Store | None = None,
    ) -> None:
        self.backing = backing
        self.path = path
        self.metadata = metadata
        self.cached = cached
        self._local = local

    def __reduce__(self) -> Any:
        return (ChunkReader, (self.backing, self.path, self.metadata, self.cached))

    def __repr__(self) -> str:
        return f"ChunkReader({self.backing!r}, {self.path!r}, cached={self.cached})"

    def store(self) -> Store:
        """The store this reader reads through here (resolved on first use)."""
        if self._local is not None:
            return self._local
        if self.cached:
            from swarmstore.cache import worker_cache

            return worker_cache(self.backing)
        return self.backing

    def array(self) -> zarr.Array:
        # Resolved per call, not kept on the reader: in-process workers share one unpickled
        # reader, and each must read through its own cache (``_array_for`` caches per store).
        return _array_for(self.store(), self.path, self.metadata)

    def __call__(self, selection: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        return np.asarray(self.array()[selection])


_arrays: OrderedDict[tuple[int, str, str], zarr.Array] = OrderedDict()
_arrays_lock = threading.Lock()


def _array_for(store: Store, path: str, metadata: dict[str, Any]) -> zarr.Array:
    """A zarr Array over ``store`` built from ``metadata`` (no read), reused across tasks."""
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath

    key = (id(store), path, tokenize(metadata))
    with _arrays_lock:
        array = _arrays.get(key)
        if array is not None:
            _arrays.move_to_end(key)
            return array
    array = zarr.Array(AsyncArray(metadata, StorePath(store, path)))  # type: ignore[call-overload]
    with _arrays_lock:
        _arrays[key] = array
        while len(_arrays) > 64:
            _arrays.popitem(last=False)
    return array


class ChunkAnnotation:
    """``swarm`` annotation of a read task: ``{"chunk": <store key of its shard/chunk>}``."""

    def __init__(self, chunk_keys: dict[Any, str]) -> None:
        self.chunk_keys = chunk_keys

    def __call__(self, key: Any) -> dict[str, str] | None:
        chunk = self.chunk_keys.get(key)
        return {"chunk": chunk} if chunk is not None else None


def to_dask(
    array: zarr.Array, chunks: Any = None, *, name: str | None = None, check: bool = True
) -> da.Array:
    """A dask array over ``array`` whose read tasks carry chunk-affinity annotations.

    ``chunks`` defaults to the array's storage objects (shards when sharded), so one task
    reads one object. If ``array`` reads through a TieredStore, tasks on a worker read via
    that worker's shared cache for the same backing store. With ``check``, warn
    (:class:`AffinityWarning`) when a distributed client is in use and neither it nor its
    scheduler turns off low-level fusion, which drops the annotations (dask/dask#7036;
    see :func:`affinity_config`).
    """
    import dask.array as da
    from dask._task_spec import Task
    from dask.highlevelgraph import HighLevelGraph

    store = array.store
    cached = isinstance(store, TieredStore)
    backing = store.backing if isinstance(store, TieredStore) else store
    metadata = array.metadata.to_dict()
    grid = array.shards or array.chunks
    dchunks = da.core.normalize_chunks(chunks or grid, array.shape, dtype=array.dtype)
    name = name or READ_PREFIX + tokenize(store_identity(backing), array.path, metadata, dchunks)
    reader = ChunkReader(backing, array.path, metadata, cached, local=store)
    prefix = f"{array.path}/" if array.path else ""
    starts = [np.cumsum((0, *c[:-1])) for c in dchunks]
    dsk: dict[Any, Any] = {}
    chunk_keys: dict[Any, str] = {}
    for idx in itertools.product(*(range(len(c)) for c in dchunks)):
        sel = tuple(
            slice(int(s[i]), int(s[i]) + c[i]) for s, c, i in zip(starts, dchunks, idx, strict=True)
        )
        key = (name, *idx)
        dsk[key] = Task(key, reader, sel)
        coords = tuple(int(s[i]) // g for s, i, g in zip(starts, idx, grid, strict=True))
        chunk_keys[key] = prefix + array.metadata.encode_chunk_key(coords)
    with dask.annotate(swarm=ChunkAnnotation(chunk_keys)):
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    result = da.Array(graph, name, dchunks, meta=meta)
    if check and _fusion_drops_annotations():
        warnings.warn(
            "dask low-level fusion (optimization.fuse.active, on the client and on the "
            "scheduler) will drop the swarm chunk annotations of these read tasks "
            "(dask/dask#7036), so reads will not follow their cache; use "
            "swarmstore.dataset.affinity_config() around graph building and compute",
            AffinityWarning,
            stacklevel=2,
        )
    return result


def _fuses() -> bool:
    return dask.config.get("optimization.fuse.active", None) is not False


def _fusion_drops_annotations() -> bool:
    """True when a distributed client is in use and both it and its scheduler would fuse.

    Measured with dask/distributed 2026.8: annotations reach the scheduler when either the
    client's or the scheduler's ``optimization.fuse.active`` is False at compute time. With
    no distributed client there is no placement to lose; an asynchronous client is not
    asked (that would block its event loop).
    """
    if not _fuses():
        return False
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return False
    if client.asynchronous:
        return False
    try:
        return bool(client.run_on_scheduler(_fuses))
    except Exception:  # a scheduler that refuses run_on_scheduler: say nothing
        return False


def affinity_config() -> Any:
    """``dask.config.set`` that keeps chunk-affinity annotations through optimisation.

    dask.array's default low-level fusion flattens the graph into a plain dict, dropping
    every layer annotation; with ``optimization.fuse.active=False`` the layers survive.

    >>> with affinity_config():
    ...     pass
    """
    return dask.config.set({"optimization.fuse.active": False})


def check_affinity(collection: Any, *, warn: bool = True) -> list[Any]:
    """Read tasks of ``collection`` that lose their affinity annotation once optimised.

    Graph optimisation may fuse or rewrite tasks and drop annotations (dask/dask#7036);
    then the reads run anywhere and miss the warm caches. Returns the keys concerned and,
    with ``warn``, emits an :class:`AffinityWarning` naming how many.
    """
    raw = collection.__dask_graph__()
    reads = {k for name, layer in raw.layers.items() if name.startswith(READ_PREFIX) for k in layer}
    if not reads:
        return []
    # what the distributed client does (HLGExpr._optimized_dsk): the collection's own
    # low-level optimiser over its graph and keys; a plain dict back means layers are gone
    optimizer = getattr(collection, "__dask_optimize__", None)
    graph = raw
    if optimizer is not None:
        graph = optimizer(raw, collection.__dask_keys__())
    annotated: set[Any] = set()
    present: set[Any] = set()
    for layer in getattr(graph, "layers", {"": graph}).values():
        swarm = (getattr(layer, "annotations", None) or {}).get("swarm")
        for key in layer:
            if key in reads:
                present.add(key)
                value = swarm(key) if callable(swarm) else swarm
                if isinstance(value, dict) and value.get("chunk"):
                    annotated.add(key)
    lost = sorted(present - annotated, key=str)
    if not present:  # every read task was fused into something else
        lost = sorted(reads, key=str)
    if lost and warn:
        warnings.warn(
            f"{len(lost)} of {len(reads)} chunk-read tasks lost their swarm chunk annotation "
            "during graph optimisation (dask/dask#7036); they will not run on their cache's "
            "worker. Set dask config optimization.fuse.active=False (see affinity_config()).",
            AffinityWarning,
            stacklevel=2,
        )
    return lost
