"""The entries of one snapshot, loaded piece by piece, and how a commit merges changes in.

A :class:`Tree` answers ``key -> entry`` for a snapshot: zarr metadata documents from
the snapshot's inline text, chunk keys from the one manifest piece whose key range holds
them, loaded on first use (``Loader``: verified against the piece's hash, cached by
hash, since pieces never change). :func:`merge` builds the next snapshot's tree from a
base tree and a session's changes: pieces no change falls into are kept by reference;
the runs of pieces that do are loaded, patched and cut again (``_piece.split``).
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zarr.abc.store import _store_supports_sync_io
from zarr.core.buffer import default_buffer_prototype

from swarmstore._together import together
from swarmstore.checkpoint._caps import whole_request
from swarmstore.checkpoint._docs import get_doc
from swarmstore.checkpoint._manifest import Entry, content_hash, is_metadata_key
from swarmstore.checkpoint._piece import Item, Piece, PieceRef, split
from swarmstore.checkpoint._snapshot import Snapshot, piece_key
from swarmstore.errors import CheckpointNotFoundError, ManifestError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from zarr.abc.store import Store

__all__ = ["Loader", "Tree", "merge", "node_of"]

#: Decoded piece entries the shared cache keeps (about 40 bytes each).
CACHE_ENTRIES = 4_000_000


class Loader:
    """Loads pieces from ``store`` by reference: verified, cached (bounded LRU), shared.

    Concurrent loads of one piece on one event loop share one read (zarr reads ten
    chunks at a time, and the chunks of one piece would otherwise each fetch it).
    """

    def __init__(self, store: Store, max_entries: int = CACHE_ENTRIES) -> None:
        self.store, self.max_entries = store, max_entries
        self._cache: OrderedDict[str, Piece] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, str], asyncio.Future[Piece]] = {}
        #: Pieces built in memory and not stored yet (a schema-1 base): the commit writes them.
        self.unsaved: dict[str, tuple[Piece, bytes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a pickled loader (a Dask task's) starts with an empty cache of its own
        return {"store": self.store, "max_entries": self.max_entries, "unsaved": self.unsaved}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["max_entries"])  # type: ignore[misc]
        self.unsaved = state["unsaved"]

    def cached(self, digest: str) -> Piece | None:
        with self._lock:
            piece = self._cache.get(digest)
            if piece is not None:
                self._cache.move_to_end(digest)
            return piece

    def keep(self, digest: str, piece: Piece) -> None:
        with self._lock:
            if digest not in self._cache:
                self._cache[digest] = piece
                self._held += len(piece)
            while self._held > self.max_entries and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._held -= len(old)

    def _decode(self, ref: PieceRef, buf: Any) -> Piece:
        if buf is None:
            raise CheckpointNotFoundError(
                f"manifest piece {ref.hash} is missing from {self.store!r}: the checkpoint is "
                "damaged (restore another step, or repair the store)"
            )
        data = buf.to_bytes()
        if content_hash(data) != ref.hash:
            raise ManifestError(f"manifest piece {ref.hash} fails its xxh3 check")
        piece = Piece.decode(data, where=f"manifest piece {ref.hash}")
        if len(piece) != ref.count or piece.keys[0] != ref.first:
            raise ManifestError(f"manifest piece {ref.hash} does not match its reference")
        self.keep(ref.hash, piece)
        return piece

    async def load(self, ref: PieceRef) -> Piece:
        piece = self.cached(ref.hash) or self._unsaved(ref)
        if piece is not None:
            return piece
        loop = asyncio.get_running_loop()
        key = (id(loop), ref.hash)
        pending = self._loading.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            return await self.load(ref)  # the read it waited on was cancelled: read again
        future = self._loading[key] = loop.create_future()
        try:
            piece = self._decode(ref, await get_doc(self.store, piece_key(ref.hash)))
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved: the waiters raise it themselves
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._loading[key]
        future.set_result(piece)
        return piece

    def load_sync(self, ref: PieceRef) -> Piece:
        piece = self.cached(ref.hash) or self._unsaved(ref)
        if piece is not None:
            return piece
        buf = self.store.get_sync(  # type: ignore[attr-defined]
            piece_key(ref.hash),
            prototype=default_buffer_prototype(),
            byte_range=whole_request(self.store),
        )
        return self._decode(ref, buf)

    def _unsaved(self, ref: PieceRef) -> Piece | None:
        held = self.unsaved.get(ref.hash)
        return held[0] if held else None

    @property
    def supports_sync(self) -> bool:
        return _store_supports_sync_io(self.store)


def node_of(key: str, nodes: Iterable[str]) -> str:
    """The deepest node path in ``nodes`` that is a proper ancestor of ``key`` (or "")."""
    parts = key.split("/")
    names = set(nodes)
    for depth in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:depth])
        if candidate in names:
            return candidate
    return ""


def _suffix(key: str, node: str) -> str:
    return key[len(node) + 1 :] if node else key


def _join(node: str, suffix: str) -> str:
    return f"{node}/{suffix}" if node else suffix


@dataclass
class Tree:
    """A snapshot's entries: inline metadata text, and piece references per node."""

    inline: dict[str, str]
    nodes: dict[str, tuple[PieceRef, ...]]
    loader: Loader
    _firsts: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def empty(cls, loader: Loader) -> Tree:
        return cls({}, {}, loader)

    @classmethod
    def of(cls, snapshot: Snapshot, loader: Loader) -> Tree:
        return cls(dict(snapshot.inline), dict(snapshot.nodes), loader)

    @classmethod
    def from_entries(cls, entries: Mapping[str, Entry], loader: Loader) -> Tree:
        """A tree of a flat ``key -> entry`` map (a schema-1 manifest): pieces held in memory."""
        inline = {k: e for k, e in entries.items() if isinstance(e, str)}
        meta_nodes = _meta_nodes(inline)
        grouped: dict[str, list[Item]] = {}
        for key, e in entries.items():
            if not isinstance(e, str):
                node = node_of(key, meta_nodes)
                grouped.setdefault(node, []).append((_suffix(key, node), bytes.fromhex(e[0]), e[1]))
        nodes = {}
        for node, items in grouped.items():
            refs = []
            for piece in split(sorted(items)):
                data = piece.encode()
                ref = piece.ref(data)
                loader.unsaved[ref.hash] = (piece, data)
                refs.append(ref)
            nodes[node] = tuple(refs)
        return cls(inline, nodes, loader)

    def _ref(self, node: str, suffix: str) -> PieceRef | None:
        refs = self.nodes.get(node)
        if not refs:
            return None
        firsts = self._firsts.get(node)
        if firsts is None:
            firsts = self._firsts[node] = [r.first for r in refs]
        i = bisect.bisect_right(firsts, suffix) - 1
        return refs[i] if i >= 0 else None

    def _candidates(self, key: str) -> list[tuple[str, PieceRef]]:
        found, parts = [], key.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            node = "/".join(parts[:depth])
            ref = self._ref(node, _suffix(key, node))
            if ref is not None:
                found.append((node, ref))
        return found

    async def get(self, key: str) -> Entry | None:
        """The entry of ``key`` (loading at most the pieces whose ranges hold it)."""
        if key in self.inline:
            return self.inline[key]
        for node, ref in self._candidates(key):
            hit = (await self.loader.load(ref)).find(_suffix(key, node))
            if hit is not None:
                return hit
        return None

    def get_sync(self, key: str) -> Entry | None:
        if key in self.inline:
            return self.inline[key]
        for node, ref in self._candidates(key):
            hit = self.loader.load_sync(ref).find(_suffix(key, node))
            if hit is not None:
                return hit
        return None

    async def node_items(self, node: str) -> list[Item]:
        """Every ``(suffix, digest, size)`` of ``node``, in key order."""
        pieces = await together(*map(self.loader.load, self.nodes.get(node, ())))
        return [item for piece in pieces for item in piece.items()]

    async def keys(self, nodes: Iterable[str] | None = None) -> list[str]:
        """Every key: inline ones, and those of ``nodes`` (default: all nodes)."""
        out = list(self.inline)
        for node in self.nodes if nodes is None else nodes:
            out.extend(_join(node, s) for s, _, _ in await self.node_items(node))
        return out

    async def entries(self) -> dict[str, Entry]:
        """The whole tree as a flat map (loads every piece)."""
        out: dict[str, Entry] = dict(self.inline)
        for node in self.nodes:
            for s, d, size in await self.node_items(node):
                out[_join(node, s)] = (d.hex(), size)
        return out

    async def hashes(self) -> set[str]:
        """Every object hash the tree names (loads every piece)."""
        pieces = await asyncio.gather(
            *(self.loader.load(r) for rs in self.nodes.values() for r in rs)
        )
        # raw 16-byte digests deduplicated first: only distinct ones are turned into text
        blob = b"".join(p.digests for p in pieces)
        return {d.hex() for d in {blob[i : i + 16] for i in range(0, len(blob), 16)}}


def _meta_nodes(inline: Iterable[str]) -> set[str]:
    return {k.rsplit("/", 1)[0] if "/" in k else "" for k in inline if is_metadata_key(k)}


@dataclass
class Merged:
    """The next snapshot's tree, and the new pieces to store before committing it."""

    inline: dict[str, str]
    nodes: dict[str, tuple[PieceRef, ...]]
    new: list[tuple[PieceRef, bytes]]


async def merge(
    base: Tree, changes: Mapping[str, Entry | None], dropped: Iterable[str] = ()
) -> Merged:
    """``base`` with ``changes`` applied (None deletes) and the ``dropped`` nodes removed."""
    inline = dict(base.inline)
    nodes = {n: r for n, r in base.nodes.items() if n not in set(dropped)}
    grouped: dict[str, dict[str, Entry | None]] = {}
    chunks = []
    for key, e in changes.items():
        if isinstance(e, str):
            inline[key] = e
        else:
            inline.pop(key, None)
            chunks.append((key, e))
    meta_nodes = _meta_nodes(inline) | set(nodes)
    memo: dict[str, tuple[str, int, dict[str, Entry | None]]] = {}  # folder -> node, cut, edits
    for key, e in chunks:
        folder = key.rpartition("/")[0]
        held = memo.get(folder)
        if held is None:  # chunk keys share folders: one lookup per folder
            node = node_of(key, meta_nodes)
            held = memo[folder] = (node, len(node) + 1 if node else 0, grouped.setdefault(node, {}))
        held[2][key[held[1] :]] = e
    new: list[tuple[PieceRef, bytes]] = []
    for node, edits in grouped.items():
        refs = await _merge_node(base, nodes.get(node, ()), edits, new)
        if refs:
            nodes[node] = refs
        else:
            nodes.pop(node, None)
    for refs in nodes.values():  # pieces of a schema-1 base were never stored
        for ref in refs:
            held = base.loader.unsaved.get(ref.hash)
            if held is not None:
                new.append((ref, held[1]))
    return Merged(inline, nodes, new)


async def _merge_node(
    base: Tree,
    refs: tuple[PieceRef, ...],
    edits: dict[str, Entry | None],
    new: list[tuple[PieceRef, bytes]],
) -> tuple[PieceRef, ...]:
    firsts = [r.first for r in refs]
    touched: dict[int, dict[str, Entry | None]] = {}
    if len(refs) <= 1:
        touched[0] = edits  # one piece or none: every edit falls in it
    else:
        for suffix, e in edits.items():
            i = max(bisect.bisect_right(firsts, suffix) - 1, 0)
            touched.setdefault(i, {})[suffix] = e
    held = [i for i in touched if i < len(refs)]
    pieces = await together(*(base.loader.load(refs[i]) for i in held))
    patched = list(refs)
    for i, piece in zip(held, pieces, strict=True):
        ref = _patch(base, piece, touched[i], new)
        if ref is not None:  # changed entries of keys it holds: patched in place
            patched[i] = ref
            del touched[i]
    refs = tuple(patched)
    out: list[PieceRef] = []
    i = 0
    while i < max(len(refs), 1):
        if i not in touched:
            out.extend(refs[i : i + 1])
            i += 1
            continue
        run_end = i  # patch a run of consecutive touched pieces together
        while run_end + 1 in touched:
            run_end += 1
        run = refs[i : run_end + 1]
        patch: dict[str, Entry | None] = {}
        for j in range(i, run_end + 1):
            patch.update(touched[j])
        out.extend(await _rewrite(base, run, patch, new))
        i = run_end + 1
    return tuple(out)


def _patch(
    base: Tree, piece: Piece, edits: dict[str, Entry | None], new: list[tuple[PieceRef, bytes]]
) -> PieceRef | None:
    """``piece`` with ``edits`` applied in place, when they only change entries of keys
    it holds (no insert, no delete): no re-sort, no re-split; else None."""
    if any(e is None or isinstance(e, str) for e in edits.values()):
        return None
    piece = piece.patched(
        {k: (bytes.fromhex(e[0]), e[1]) for k, e in edits.items()}  # type: ignore[index]
    )
    if piece is None:
        return None
    data = piece.encode()
    out = piece.ref(data)
    base.loader.keep(out.hash, piece)
    new.append((out, data))
    return out


async def _rewrite(
    base: Tree,
    run: Iterable[PieceRef],
    patch: dict[str, Entry | None],
    new: list[tuple[PieceRef, bytes]],
) -> list[PieceRef]:
    pieces = await together(*map(base.loader.load, run))
    current = {k: (d, s) for p in pieces for k, d, s in p.items()}
    raw: dict[str, bytes] = {}  # equal digests (fill-like chunks) are converted once
    for suffix, e in patch.items():
        if e is None:
            current.pop(suffix, None)
        else:
            digest = raw.get(e[0]) or raw.setdefault(e[0], bytes.fromhex(e[0]))  # type: ignore[index]
            current[suffix] = (digest, e[1])  # type: ignore[index]
    refs = []
    for piece in split((k, d, s) for k, (d, s) in sorted(current.items())):
        data = piece.encode()
        ref = piece.ref(data)
        base.loader.keep(ref.hash, piece)
        new.append((ref, data))
        refs.append(ref)
    return refs
