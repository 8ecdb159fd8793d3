"""Turn user data into manifest entries: zarr encodes, a ManifestStore hashes and stores.

- numpy and other array-likes: zarr encodes them in this process.
- dask arrays: each block becomes one task that encodes and stores its own chunks on the
  worker that holds it and returns only its small ``key -> (hash, size)`` map; array
  data never travels to the client.
- zarr v3 arrays and groups: their stored (already encoded) bytes are copied as they are,
  hashed on the way; zarr v2 arrays are re-encoded as v3 through the dask path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import ManagedMemoryStore, MemoryStore, WrapperStore

from swarmstore.checkpoint._manifest import Entry, check_key
from swarmstore.checkpoint._store import ManifestStore
from swarmstore.errors import InvalidKeyError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["write_data"]

type Encoding = Mapping[str, Mapping[str, Any]]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def write_data(ms: ManifestStore, data: Any, encoding: Encoding, limit: int) -> None:
    """Write ``data`` (array, group, or nested mapping of them) into ``ms`` at its root."""
    if isinstance(data, Mapping):
        zarr.create_group(store=ms)
        _write_tree(ms, data, "", encoding, limit)
    elif isinstance(data, zarr.Group):
        sync(_copy_raw(data.store, data.path, ms, "", limit))
    else:
        _write_array(ms, "", data, encoding.get("", {}), limit)


def _write_tree(
    ms: ManifestStore, tree: Mapping[Any, Any], prefix: str, encoding: Encoding, limit: int
) -> None:
    for name, value in tree.items():
        if not isinstance(name, str) or "/" in name:
            raise InvalidKeyError(f"checkpoint member names are strings without '/', got {name!r}")
        path = check_key(_join(prefix, name))
        if isinstance(value, Mapping):
            zarr.create_group(store=ms, path=path)
            _write_tree(ms, value, path, encoding, limit)
        elif isinstance(value, zarr.Group):
            sync(_copy_raw(value.store, value.path, ms, path, limit))
        else:
            _write_array(ms, path, value, encoding.get(path, {}), limit)


def _write_array(
    ms: ManifestStore, path: str, value: Any, enc: Mapping[str, Any], limit: int
) -> None:
    if isinstance(value, zarr.Array):
        if value.metadata.zarr_format == 3 and not enc:
            sync(_copy_raw(value.store, value.path, ms, path, limit))
            return
        value = da.from_zarr(value)
    if isinstance(value, da.Array):
        _write_dask(ms, path, value, enc)
        return
    value = np.asarray(value)
    arr = zarr.create_array(
        store=ms,
        name=path or None,
        shape=value.shape,
        dtype=value.dtype,
        **{"chunks": "auto", **enc},
    )
    arr[...] = value


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

    await asyncio.gather(*(one(k) for k in keys))


def _aligned(chunks: tuple[int, ...], unit: int) -> bool:
    edges = np.cumsum(chunks)[:-1]
    return bool(np.all(edges % unit == 0))


def _write_dask(ms: ManifestStore, path: str, darr: da.Array, enc: Mapping[str, Any]) -> None:
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
    meta_key = _join(path, "zarr.json")
    meta = ms.entries[meta_key]
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
        tasks.append(
            dask.delayed(_write_block, pure=False)(
                block, backing, path, meta, region, known, ms.verify
            )
        )
    scheduler = "threads" if _process_local(ms.backing) else None
    for result in dask.compute(*tasks, scheduler=scheduler):
        result["entries"].pop(meta_key, None)
        ms.entries.update(result["entries"])
        ms.written_objects += result["written_objects"]
        ms.written_bytes += result["written_bytes"]
        ms.reused_objects += result["reused_objects"]


def _write_block(
    block: np.ndarray,
    backing: Store,
    path: str,
    meta: Entry,
    region: tuple[slice, ...],
    known: frozenset[str],
    verify: bool,
) -> dict[str, Any]:
    """Runs on a worker: encode and store the chunks of one block; return their entries."""
    ms = ManifestStore(backing, {_join(path, "zarr.json"): meta}, known=known, verify=verify)
    arr = zarr.open_array(store=ms, path=path, mode="r+")
    arr[region] = block
    return {
        "entries": ms.entries,
        "written_objects": ms.written_objects,
        "written_bytes": ms.written_bytes,
        "reused_objects": ms.reused_objects,
    }


def _process_local(store: Store) -> bool:
    """True for stores whose pickled copies do not share data (plain MemoryStore)."""
    while isinstance(store, WrapperStore):
        store = store._store
    return isinstance(store, MemoryStore) and not isinstance(store, ManagedMemoryStore)
