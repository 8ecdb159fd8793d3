"""Turn user data into a session's changes: zarr encodes, a ManifestStore hashes and stores.

- numpy and other array-likes: zarr encodes them in this process. Before encoding, each
  chunk's raw bytes are hashed (xxh3, many GB/s) and compared with what this manager
  saved last (:class:`Fingerprints`): a chunk whose raw bytes and array definition are
  unchanged keeps its stored object, unencoded.
- dask arrays: each block becomes one task that encodes and stores its own chunks on the
  worker that holds it and returns only its small ``key -> (hash, size)`` map; array
  data never travels to the client. The session merges those maps and commits once.
- zarr v3 arrays and groups: their stored (already encoded) bytes are copied as they are,
  hashed on the way; zarr v2 arrays are re-encoded as v3 through the dask path.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xxhash
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import ManagedMemoryStore, MemoryStore, WrapperStore

from swarmstore._together import together
from swarmstore.checkpoint._manifest import Entry, check_key
from swarmstore.checkpoint._store import ManifestStore
from swarmstore.errors import InvalidKeyError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from zarr.abc.store import Store

    from swarmstore.checkpoint._session import Session

__all__ = ["Fingerprints", "write_data"]

type Encoding = Mapping[str, Mapping[str, Any]]


class Fingerprints:
    """Raw-content hashes of the chunks a manager saved last, per array path.

    Valid only against the snapshot they were recorded for, with the same array
    definition (the ``zarr.json`` text: dtype, chunks, codecs): then equal raw bytes
    mean equal encoded bytes, and the stored object can be kept without encoding.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.pending: dict[str, tuple[str, dict[str, str]]] = {}

    def get(self, path: str, snapshot: str | None, meta: str) -> dict[str, str]:
        held = self._by_path.get(path)
        if held is None or snapshot is None or held[:2] != (snapshot, meta):
            return {}
        return held[2]

    def committed(self, snapshot: str) -> None:
        """The session the pending fingerprints came from committed as ``snapshot``."""
        self._by_path = {p: (snapshot, m, raws) for p, (m, raws) in self.pending.items()}
        self.pending = {}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def write_data(
    session: Session,
    data: Any,
    encoding: Encoding,
    limit: int,
    fingerprints: Fingerprints | None = None,
) -> None:
    """Write ``data`` (array, group, or nested mapping of them) into the session at its root."""
    ms = session.store
    if isinstance(data, Mapping):
        zarr.create_group(store=ms)
        _write_tree(session, data, "", encoding, limit, fingerprints)
    elif isinstance(data, zarr.Group):
        sync(_copy_raw(data.store, data.path, ms, "", limit))
    else:
        _write_array(session, "", data, encoding.get("", {}), limit, fingerprints)


def _write_tree(
    session: Session,
    tree: Mapping[Any, Any],
    prefix: str,
    encoding: Encoding,
    limit: int,
    fingerprints: Fingerprints | None,
) -> None:
    for name, value in tree.items():
        if not isinstance(name, str) or "/" in name:
            raise InvalidKeyError(f"checkpoint member names are strings without '/', got {name!r}")
        path = check_key(_join(prefix, name))
        if isinstance(value, Mapping):
            zarr.create_group(store=session.store, path=path)
            _write_tree(session, value, path, encoding, limit, fingerprints)
        elif isinstance(value, zarr.Group):
            sync(_copy_raw(value.store, value.path, session.store, path, limit))
        else:
            _write_array(session, path, value, encoding.get(path, {}), limit, fingerprints)


def _write_array(
    session: Session,
    path: str,
    value: Any,
    enc: Mapping[str, Any],
    limit: int,
    fingerprints: Fingerprints | None,
) -> None:
    ms = session.store
    if isinstance(value, zarr.Array):
        if value.metadata.zarr_format == 3 and not enc:
            sync(_copy_raw(value.store, value.path, ms, path, limit))
            return
        value = da.from_zarr(value)
    if isinstance(value, da.Array):
        _write_dask(session, path, value, enc, fingerprints)
        return
    value = np.asarray(value)
    arr = zarr.create_array(
        store=ms,
        name=path or None,
        shape=value.shape,
        dtype=value.dtype,
        **{"chunks": "auto", **enc},
    )
    if fingerprints is None:
        arr[...] = value
        return
    _write_changed(session, arr, path, value, fingerprints)


def _regions(arr: zarr.Array) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    unit = arr.shards or arr.chunks
    grid = [range(0, max(n, 1), max(u, 1)) for n, u in zip(arr.shape, unit, strict=True)]
    out = []
    for starts in itertools.product(*grid):
        idx = tuple(s // max(u, 1) for s, u in zip(starts, unit, strict=True))
        region = tuple(
            slice(s, min(s + u, n)) for s, u, n in zip(starts, unit, arr.shape, strict=True)
        )
        out.append((idx, region))
    return out


def _write_changed(
    session: Session, arr: zarr.Array, path: str, value: np.ndarray, fingerprints: Fingerprints
) -> None:
    """Encode only the chunks whose raw bytes differ from the last save (see Fingerprints)."""
    ms = session.store
    meta_key = _join(path, "zarr.json")
    meta = ms.changes[meta_key]
    assert isinstance(meta, str)
    base = session.base
    prev = fingerprints.get(path, base.id if base else None, meta)
    present = _present(session, path) if prev else {}
    raws, stale, kept = {}, [], []
    for idx, region in _regions(arr):
        suffix = arr.metadata.encode_chunk_key(idx)
        key = _join(path, suffix)
        raws[key] = xxhash.xxh3_128_hexdigest(np.ascontiguousarray(value[region]))
        if prev.get(key) == raws[key] and present.get(suffix, True):
            kept.append(key)
        else:
            stale.append(region)
    fingerprints.pending[path] = (meta, raws)
    session.keep(kept)
    if len(stale) * 2 > len(raws):
        arr[...] = value  # most chunks changed: one write is cheaper than many
        return
    for region in stale:
        arr[region] = value[region]


def _present(session: Session, path: str) -> dict[str, bool]:
    """Per chunk key of ``path`` in the base: is its object confirmed present (``known``)?

    A key absent here held the fill value (no object), which is kept as it is too.
    """
    items = sync(session.tree.node_items(path))
    known = session.store.known
    return {k: size == 0 or digest.hex() in known for k, digest, size in items}


async def _copy_raw(src: Store, src_path: str, ms: ManifestStore, dst: str, limit: int) -> None:
    """Copy every stored key under ``src_path`` byte for byte (zarr already encoded them)."""
    prefix = f"{src_path}/" if src_path else ""
    keys = [k async for k in src.list_prefix(prefix)]
    sem = asyncio.Semaphore(limit)
    proto = default_buffer_prototype()

    async def one(key: str) -> None:
        async with sem:
            buf = await src.get(key, proto)
            if buf is not None:
                await ms.set(_join(dst, key[len(prefix) :]), buf)

    await together(*(one(k) for k in keys))


def _aligned(chunks: tuple[int, ...], unit: int) -> bool:
    edges = np.cumsum(chunks)[:-1]
    return bool(np.all(edges % unit == 0))


def _chunk_indices(region: tuple[slice, ...], unit: tuple[int, ...]) -> Any:
    return itertools.product(
        *(range(r.start // u, -(-r.stop // u)) for r, u in zip(region, unit, strict=True))
    )


def _write_dask(
    session: Session,
    path: str,
    darr: da.Array,
    enc: Mapping[str, Any],
    fingerprints: Fingerprints | None,
) -> None:
    """Write ``darr`` at ``path``: one task per block, on the worker holding it; the
    session takes in what the tasks return (their changes, and the raw fingerprints)."""
    ms = session.store
    arr, darr = _create_for(ms, path, darr, enc)
    meta_key = _join(path, "zarr.json")
    meta = ms.changes[meta_key]
    assert isinstance(meta, str)
    usable = _usable_fingerprints(session, path, meta, fingerprints)
    tasks = _block_tasks(ms, arr, darr, path, meta, usable)
    scheduler = "threads" if _process_local(ms.backing) else None
    raws = _take_results(session, dask.compute(*tasks, scheduler=scheduler), meta_key)
    if fingerprints is not None:
        fingerprints.pending[path] = (meta, raws)


def _create_for(
    ms: ManifestStore, path: str, darr: da.Array, enc: Mapping[str, Any]
) -> tuple[zarr.Array, da.Array]:
    """The array at ``path`` in ``ms``, and ``darr`` rechunked to its write unit if its
    blocks do not align with it (a block must hold whole chunks, or whole shards)."""
    chunks = enc.get("chunks") or tuple(max(c) if c else 1 for c in darr.chunks)
    arr = zarr.create_array(
        store=ms,
        name=path or None,
        shape=darr.shape,
        dtype=darr.dtype,
        **{**enc, "chunks": chunks},
    )
    unit = arr.shards or arr.chunks
    if not all(_aligned(c, u) for c, u in zip(darr.chunks, unit, strict=True)):
        darr = darr.rechunk(unit)
    return arr, darr


def _usable_fingerprints(
    session: Session, path: str, meta: str, fingerprints: Fingerprints | None
) -> dict[str, Any]:
    """The previous save's raw fingerprints of ``path`` whose objects are still there."""
    base = session.base
    prev = fingerprints.get(path, base.id if base else None, meta) if fingerprints else {}
    present = _present(session, path) if prev else {}
    cut = len(path) + 1 if path else 0
    return {k: v for k, v in prev.items() if present.get(k[cut:], True)}


def _block_tasks(
    ms: ManifestStore,
    arr: zarr.Array,
    darr: da.Array,
    path: str,
    meta: str,
    usable: Mapping[str, Any],
) -> list[Any]:
    """One delayed ``_write_block`` per block, with the fingerprints of its chunks."""
    unit = arr.shards or arr.chunks
    tag = uuid.uuid4().hex
    backing = dask.delayed(ms.backing, name=f"checkpoint-store-{tag}", traverse=False)
    known = dask.delayed(frozenset(ms.known), name=f"checkpoint-known-{tag}", traverse=False)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in darr.chunks]
    tasks = []
    for index, block in np.ndenumerate(darr.to_delayed()):
        region = tuple(
            slice(int(starts[d][i]), int(starts[d][i] + darr.chunks[d][i]))
            for d, i in enumerate(index)
        )
        keys = (_join(path, arr.metadata.encode_chunk_key(i)) for i in _chunk_indices(region, unit))
        hints = {k: usable[k] for k in keys if k in usable}
        tasks.append(
            dask.delayed(_write_block, pure=False)(
                block, backing, path, meta, region, known, ms.verify, hints
            )
        )
    return tasks


def _take_results(
    session: Session, results: Iterable[Mapping[str, Any]], meta_key: str
) -> dict[str, str]:
    """Merge the blocks' changes and counts into the session; their raw fingerprints."""
    ms = session.store
    raws: dict[str, str] = {}
    for result in results:
        result["changes"].pop(meta_key, None)
        ms.changes.update(result["changes"])
        session.keep(result["kept"])
        raws.update(result["raws"])
        for name in ("written_objects", "written_bytes", "reused_objects", "hashed_bytes"):
            setattr(ms.writer, name, getattr(ms.writer, name) + result[name])
    return raws


def _write_block(
    block: np.ndarray,
    backing: Store,
    path: str,
    meta: Entry,
    region: tuple[slice, ...],
    known: frozenset[str],
    verify: bool,
    hints: dict[str, str],
) -> dict[str, Any]:
    """Runs on a worker: encode and store the chunks of one block whose raw bytes changed
    (``hints``: the raw hashes of the last save); return their entries and fingerprints."""
    ms = ManifestStore(backing, {_join(path, "zarr.json"): meta}, known=known, verify=verify)
    arr = zarr.open_array(store=ms, path=path, mode="r+")
    unit = arr.shards or arr.chunks
    raws: dict[str, str] = {}
    kept, stale = [], []
    for idx in _chunk_indices(region, unit):
        whole = tuple(
            slice(i * u, min((i + 1) * u, n)) for i, u, n in zip(idx, unit, arr.shape, strict=True)
        )
        local = tuple(
            slice(w.start - r.start, w.stop - r.start) for w, r in zip(whole, region, strict=True)
        )
        key = _join(path, arr.metadata.encode_chunk_key(idx))
        raws[key] = xxhash.xxh3_128_hexdigest(np.ascontiguousarray(block[local]))
        if hints.get(key) == raws[key]:
            kept.append(key)
        else:
            stale.append((whole, local))
    if not kept:
        arr[region] = block
    for whole, local in stale if kept else ():
        arr[whole] = block[local]
    w = ms.writer
    return {
        "changes": ms.changes,
        "kept": kept,
        "raws": raws,
        "written_objects": w.written_objects,
        "written_bytes": w.written_bytes,
        "reused_objects": w.reused_objects,
        "hashed_bytes": w.hashed_bytes,
    }


def _process_local(store: Store) -> bool:
    """True for stores whose pickled copies do not share data (plain MemoryStore)."""
    while isinstance(store, WrapperStore):
        store = store._store
    return isinstance(store, MemoryStore) and not isinstance(store, ManagedMemoryStore)
