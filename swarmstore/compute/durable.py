"""Durable task results: computed once, stored in any zarr store, reused by later runs.

A task annotated ``dask.annotate(swarm={"persist": True})`` (or named in ``keys=``) gets a
deterministic token: a Merkle hash of its function's *code*, its literal arguments and the
tokens of its dependencies. :func:`durable` rewrites a collection before it is computed:

- a task whose token has a complete, verified result in the store becomes a load task with
  no dependencies, so neither it nor anything upstream that only it needed runs again;
- any other persisted task runs as before and then writes its result under its token.

Changed code or inputs give a new token, hence a fresh computation. Every result is stored as
a zarr array (``<prefix>/<token>``): numeric arrays as themselves, numpy scalars (``x.sum()``)
as 0-d arrays, other values as a uint8
array of bytes from an explicit serializer (JSON, raw bytes, or pickle only when the user opts
in). The xxh3-128 checksum, length and format are written to the array's attributes last, so
a half-written result is incomplete, never valid; a truncated or corrupted one fails its
checksum and is recomputed, never returned. Nothing is unpickled unless ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xxhash
import zarr.api.asynchronous as zasync
from zarr.core.sync import sync

from swarmstore import config
from swarmstore.compute._tokens import graph_tokens
from swarmstore.errors import ConfigError, CorruptResultError

if TYPE_CHECKING:
    from dask.typing import Key
    from zarr.abc.store import Store

__all__ = ["ResultStore", "durable", "graph_tokens"]

logger = logging.getLogger(__name__)

_ATTR = "swarmstore-result"
_NUMERIC_KINDS = frozenset("biufcmM")
Format = Literal["ndarray", "scalar", "json", "bytes", "pickle"]


class ResultStore:
    """Task results in a zarr store under deterministic tokens, each verified by xxh3-128.

    Parameters
    ----------
    store : zarr.abc.store.Store or str
        Where results live: any zarr v3 store (``LocalStore``, ``FsspecStore`` over S3,
        :class:`~swarmstore.storage.ReplicatedStore` ...) or a URL zarr understands.
    prefix : str
        Group under which results are kept; plain zarr sees each result as an array.
    allow_pickle : bool, optional
        Write values JSON cannot hold exactly with pickle, and read pickled results back.
        Off by default (``swarmstore.replication.allow-pickle``): unpickling runs code, so
        only enable it for stores you alone can write to.

    Notes
    -----
    Methods are coroutines; ``load``/``save``/``verify`` are blocking facades that run them
    on zarr's IO loop (call them from threads, not from a running event loop). Concurrent
    writers of one token write the same bytes; the checksum attribute written last makes the
    result visible only once it is complete.

    Examples
    --------
    >>> from zarr.storage import MemoryStore
    >>> results = ResultStore(MemoryStore())
    >>> results.save("tok", {"a": [1, 2]})
    >>> results.load("tok")
    {'a': [1, 2]}
    """

    def __init__(
        self, store: Store | str, *, prefix: str = "swarm-results", allow_pickle: bool | None = None
    ) -> None:
        if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise ConfigError(f"result prefix {prefix!r} must be a relative path")
        if isinstance(store, str):  # a URL or a path, as zarr understands it
            from zarr.storage._common import make_store

            store = sync(make_store(store, mode="a"))
        self.store: Store = store
        self.prefix = prefix.strip("/")
        #: strict: only a real boolean True enables it ("no", "off", "False" are refused)
        self.allow_pickle: bool = config.value("replication.allow-pickle", allow_pickle)

    def __repr__(self) -> str:
        return f"ResultStore({self.store!r}, prefix={self.prefix!r})"

    def _path(self, token: str) -> str:
        if not token or not token.replace("-", "").isalnum():
            raise ValueError(f"result token {token!r} must be alphanumeric")
        return f"{self.prefix}/{token}"

    # ---- async core
    async def set(self, token: str, value: Any) -> Format:
        """Store ``value`` under ``token``; return the format used.

        Raises ``TypeError`` when the value needs pickle and pickling is not allowed.
        """
        fmt, data = self._encode(value)
        await zasync.open_group(store=self.store, path=self.prefix, mode="a")
        arr = await zasync.create_array(
            self.store,
            name=self._path(token),
            data=data,
            overwrite=True,
            attributes={_ATTR: {"complete": False}},
        )
        meta = {
            "complete": True,
            "format": fmt,
            "xxh3": xxhash.xxh3_128_hexdigest(np.ascontiguousarray(data).tobytes()),
            "nbytes": int(data.nbytes),
        }
        await arr.update_attributes({_ATTR: meta})  # last: the result is now visible
        return fmt

    async def get(self, token: str) -> Any:
        """The verified value under ``token``.

        Raises ``KeyError`` if absent or incomplete, :class:`CorruptResultError` if its bytes
        fail the checksum or cannot be decoded, ``PermissionError`` for a pickled result
        without ``allow_pickle``.
        """
        meta, data = await self._read(token)
        return self._decode(token, meta, data)

    async def verify(self, token: str) -> bool:
        """Whether a complete, intact, loadable result exists under ``token``."""
        try:
            meta, _ = await self._read(token)
        except (KeyError, CorruptResultError) as e:
            logger.debug("Result %s not reusable: %s", token, e)
            return False
        if meta["format"] == "pickle" and not self.allow_pickle:
            logger.warning("Result %s is pickled and allow_pickle is off: recomputing", token)
            return False
        return True

    async def _read(self, token: str) -> tuple[dict[str, Any], np.ndarray]:
        path = self._path(token)
        try:
            arr = await zasync.open_array(store=self.store, path=path, mode="r")
        except FileNotFoundError as e:
            raise KeyError(token) from e
        except Exception as e:  # unreadable metadata
            raise CorruptResultError(f"result {token!r}: metadata unreadable ({e})") from e
        meta = arr.attrs.get(_ATTR)
        if not isinstance(meta, dict) or not meta.get("complete"):
            raise KeyError(token)
        try:
            data = np.asarray(await arr.getitem(...))
        except Exception as e:
            raise CorruptResultError(f"result {token!r} at {path}: data unreadable ({e})") from e
        raw = np.ascontiguousarray(data).tobytes()
        if len(raw) != meta.get("nbytes") or xxhash.xxh3_128_hexdigest(raw) != meta.get("xxh3"):
            raise CorruptResultError(f"result {token!r} at {path} fails its xxh3 checksum")
        return meta, data

    # ---- serialisation
    def _encode(self, value: Any) -> tuple[Format, np.ndarray]:
        if isinstance(value, np.ndarray) and value.dtype.kind in _NUMERIC_KINDS:
            return "ndarray", value
        if isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS:
            return "scalar", np.asarray(value)  # x.sum(): a 0-d array, never pickle
        if isinstance(value, bytes | bytearray | memoryview):
            return "bytes", np.frombuffer(bytes(value), dtype=np.uint8)
        try:
            text = json.dumps(value, allow_nan=True)
            if json.loads(text) == value and type(json.loads(text)) is type(value):
                return "json", np.frombuffer(text.encode(), dtype=np.uint8)
        except (TypeError, ValueError):
            pass
        if not self.allow_pickle:
            raise TypeError(
                f"a {type(value).__name__} result needs pickle to be stored; pass "
                "allow_pickle=True (only for stores you trust) or return an array, bytes "
                "or JSON-compatible value"
            )
        import pickle

        return "pickle", np.frombuffer(pickle.dumps(value, protocol=5), dtype=np.uint8)

    def _decode(self, token: str, meta: Mapping[str, Any], data: np.ndarray) -> Any:
        fmt = meta.get("format")
        if fmt == "ndarray":
            return data
        if fmt == "scalar":
            if data.shape != ():
                raise CorruptResultError(f"result {token!r}: a scalar of shape {data.shape}")
            return data[()]
        raw = data.tobytes()
        if fmt == "bytes":
            return raw
        if fmt == "json":
            try:
                return json.loads(raw)
            except ValueError as e:
                raise CorruptResultError(f"result {token!r}: bad JSON ({e})") from e
        if fmt == "pickle":
            if not self.allow_pickle:
                raise PermissionError(
                    f"result {token!r} is pickled; refusing to unpickle it without "
                    "allow_pickle=True"
                )
            import pickle

            return pickle.loads(raw)
        raise CorruptResultError(f"result {token!r} has unknown format {fmt!r}")

    # ---- blocking facades (from threads: dask tasks, scripts)
    def load(self, token: str) -> Any:
        """Blocking :meth:`get`."""
        return sync(self.get(token))

    def save(self, token: str, value: Any) -> None:
        """Blocking :meth:`set`."""
        sync(self.set(token, value))

    def contains(self, token: str) -> bool:
        """Blocking :meth:`verify`."""
        return sync(self.verify(token))


# --------------------------------------------------------------------------- tokens
# --------------------------------------------------------------------------- graph rewrite
def _load_result(results: ResultStore, token: str) -> Any:
    return results.load(token)


def _save_result(results: ResultStore, token: str, value: Any) -> Any:
    """Write, then return the value; a result that cannot be stored (needs pickle, store
    unreachable) is still returned: persistence is an optimisation, never a failure."""
    try:
        results.save(token, value)
    except Exception as e:
        logger.warning("Result %s not persisted: %s: %s", token, type(e).__name__, e)
    return value


def _persisted_keys(hlg: Any) -> set[Key]:
    keys: set[Key] = set()
    for layer in getattr(hlg, "layers", {}).values():
        swarm = (layer.annotations or {}).get("swarm")
        if isinstance(swarm, Mapping) and swarm.get("persist"):
            keys.update(layer.keys())
    return keys


def durable(
    collection: Any,
    store: ResultStore | Store | str | None = None,
    *,
    keys: Iterable[Key] | None = None,
    allow_pickle: bool | None = None,
    on_reuse: Callable[[Key, str], None] | None = None,
) -> Any:
    """A copy of a dask collection whose persisted tasks reuse or write stored results.

    Parameters
    ----------
    collection : dask collection
        Anything with ``__dask_graph__`` and ``__dask_postpersist__`` (arrays, delayed,
        dataframes built from a HighLevelGraph).
    store : ResultStore, zarr store or URL, optional
        Where results live; default ``swarmstore.replication.result-store``.
    keys : iterable of keys, optional
        Tasks to persist beside those annotated ``swarm={"persist": True}``. With neither,
        the collection's own output keys are persisted.
    on_reuse : callable, optional
        Called with ``(key, token)`` for each task served from the store.

    Notes
    -----
    Stored results are verified (read and checked against their xxh3 checksum) here, on
    the caller's side, before the graph is rewritten; workers verify again when loading,
    so a result corrupted in between raises :class:`CorruptResultError` instead of being
    returned.
    """
    from dask._task_spec import Task, TaskRef, convert_legacy_graph
    from dask._task_spec import cull as cull_graph
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph

    results = _as_result_store(store, allow_pickle)
    hlg = collection.__dask_graph__()
    if not isinstance(hlg, HighLevelGraph):
        hlg = HighLevelGraph.from_collections(str(id(collection)), dict(hlg), ())
    outputs = list(flatten(collection.__dask_keys__()))
    wanted = set(keys or ()) | _persisted_keys(hlg)
    if not wanted:
        wanted = set(outputs)
    full = convert_legacy_graph(dict(hlg))
    tokens = graph_tokens(full)
    new: dict[Key, Any] = {}
    origin: dict[Key, Key] = {}
    for key in wanted & full.keys():
        token = tokens[key]
        if results.contains(token):
            new[key] = Task(key, _load_result, results, token)
            if on_reuse is not None:
                on_reuse(key, token)
        else:
            raw = f"swarm-raw-{token}"
            new[raw] = full[key].substitute({}, key=raw)
            origin[raw] = key
            new[key] = Task(key, _save_result, results, token, TaskRef(raw))
    full.update(new)
    kept = cull_graph(full, outputs)
    return collection.__dask_postpersist__()[0](
        _relayer(hlg, kept, origin), *collection.__dask_postpersist__()[1]
    )


def _relayer(hlg: Any, kept: Mapping[Key, Any], origin: Mapping[Key, Key]) -> Any:
    """Put each task back in its original layer (annotations intact), with layer deps."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    layer_of = {k: name for name, layer in hlg.layers.items() for k in layer}
    grouped: dict[str, dict[Key, Any]] = {}
    for key, node in kept.items():
        name = layer_of.get(origin.get(key, key), "swarm-durable")
        grouped.setdefault(name, {})[key] = node
    where = {k: name for name, group in grouped.items() for k in group}
    deps = {
        name: {where[d] for node in group.values() for d in node.dependencies} - {name}
        for name, group in grouped.items()
    }
    layers = {
        name: MaterializedLayer(
            group, annotations=getattr(hlg.layers.get(name), "annotations", None)
        )
        for name, group in grouped.items()
    }
    return HighLevelGraph(layers, deps)


def _as_result_store(store: Any, allow_pickle: bool | None) -> ResultStore:
    if isinstance(store, ResultStore):
        return store
    if store is None:
        store = config.value("replication.result-store")
        if store is None:
            raise ConfigError(
                "no result store: pass store= or set swarmstore.replication.result-store"
            )
    return ResultStore(store, allow_pickle=allow_pickle)
