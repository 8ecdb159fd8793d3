"""Shadow fragments: a coded write's fragments, parked in each node's metadata area
(``.swarmstore/s/<xxh3-128 of the key>``) before any of them replaces the old one.

Why: a node holds one object per key, so a coded overwrite replaces fragments in place.
A writer killed after ``j`` of its commits, ``m < j < k``, would leave neither version
with ``k`` fragments. With the shadows published first (at the write quorum ``w``), the
new version always has ``k`` fragments somewhere: a read that finds no decodable version
among the objects reads the shadows, decodes the new value, and repair rolls it forward.
A writer that finishes drops its shadows. A shadow holds its key, its fragment's record
(key-bound, checked) and the bytes, verified like any fragment. On a local directory the
shadow is a hard link of the staged fragment file, its header in an xattr (``Node.park``):
read back, it is the same body.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import xxhash

from swarmstore.errors import ChecksumMismatch
from swarmstore.storage._integrity import Record
from swarmstore.storage._verified import Got

if TYPE_CHECKING:
    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._integrity import Version
    from swarmstore.storage._node import Node, Pending

__all__ = ["backed", "drop_shadows", "parse_shadow", "put_shadows", "read_shadows", "shadow_name"]


def _name(node: Node) -> str:
    return node.name


def _ok(result: object) -> bool:
    return not isinstance(result, BaseException)


def shadow_name(key: str) -> str:
    return f"s/{xxhash.xxh3_128_hexdigest(key.encode())}"


def shadow_body(key: str, data: bytes, record: Record) -> bytes:
    return b"\0".join([key.encode(), record.encode(key).encode(), data])


def parse_shadow(key: str, body: bytes | None) -> Got | None:
    """The verified fragment a shadow holds; None when absent, torn or another key's."""
    if not body:
        return None
    head, sep, rest = body.partition(b"\0")
    text, sep2, data = rest.partition(b"\0")
    if not (sep and sep2) or head != key.encode():
        return None
    try:
        record = Record.decode(text, key)
        if record.fragment is None:
            return None
        record.verify(data, what=f"shadow of {key}")
    except (ValueError, ChecksumMismatch):
        return None
    return Got(bytes(data), record, len(data))


async def put_shadows(
    store: Coordinator, key: str, pieces: dict[Node, tuple[Pending, Record]]
) -> tuple[list[Node], dict[Node, BaseException]]:
    """Park every staged fragment on its node (``Node.park``: a local directory links the
    staged file); returns (acknowledged, failures). Waits for all: the commits start only
    once ``w`` shadows are durable."""
    name = shadow_name(key)
    bodies = {n: (p, shadow_body(key, p.data, r)) for n, (p, r) in pieces.items()}
    jobs = [
        store.router.send(n, lambda n, p=p, b=b: n.park(p, name, b), name=_name, nbytes=len(b))
        for n, (p, b) in bodies.items()
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    store._reraise_bugs(results)
    acked = [n for n, r in zip(pieces, results, strict=True) if _ok(r)]
    failures = {n: r for n, r in zip(pieces, results, strict=True) if not _ok(r)}
    return acked, failures


async def read_shadows(store: Coordinator, key: str, nodes: list[Node]) -> dict[Node, Got]:
    """The verified shadow fragments ``nodes`` hold for ``key``."""
    name = shadow_name(key)
    results = await asyncio.gather(
        *(store.router.send(n, lambda n: n.meta_get(name), name=_name) for n in nodes),
        return_exceptions=True,
    )
    store._reraise_bugs(results)
    out = {}
    for node, body in zip(nodes, results, strict=True):
        if _ok(body) and (got := parse_shadow(key, body)) is not None:  # type: ignore[arg-type]
            out[node] = got
    return out


def backed(found: dict[Node, Got], committed: set[Version]) -> dict[Node, Got]:
    """The shadows of a version some node committed a fragment of (``committed``).

    Shadows exist for a writer killed between its commits: then at least one fragment of
    its version was committed. Shadows of a version no node holds are a write that never
    committed anything (it failed, or its writer died before the first commit): the old
    value stands, and decoding them could bring back a value that a later delete removed
    (found by the coded machine: a failed write's shadows outlived a delete and came back
    at repair)."""
    return {n: g for n, g in found.items() if g.record.version in committed}


async def drop_shadows(store: Coordinator, key: str, nodes: list[Node], upto: Version) -> None:
    """Remove shadows of versions up to ``upto`` (a newer writer's stay)."""
    name = shadow_name(key)

    async def one(node: Node) -> None:
        body = await store.router.send(node, lambda n: n.meta_get(name), name=_name)
        got = parse_shadow(key, body)
        if body and (got is None or got.record.version <= upto):
            await store.router.send(node, lambda n: n.meta_delete(name), name=_name)

    results: list[Any] = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    store._reraise_bugs(results)
