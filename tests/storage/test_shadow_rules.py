"""Shadows only ever finish a write that committed something (found by the coded machine).

A coded write parks its fragments as shadows before its first commit, so a writer killed
between commits leaves its version decodable. A write that failed before any commit (or
whose writer died first) leaves shadows too; the old value stands, and those shadows must
never be decoded later: after a delete and the collection of its tombstones, nothing else
would tell a read or a repair that their value is gone."""

from __future__ import annotations

import pytest
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import FragmentsUnavailable
from swarmstore.storage import ReplicatedStore
from swarmstore.storage._fragments import fragments_of
from swarmstore.storage._shadows import put_shadows

PROTO = default_buffer_prototype()
KEY = "a/c/0"


def _store(tmp_path) -> ReplicatedStore:
    nodes = [f"file://{tmp_path}/n{i}" for i in range(5)]
    return ReplicatedStore(
        nodes, coding={"a/": (3, 2)}, state_dir=str(tmp_path / "s"), create=True,
        read_repair=False,
    )  # fmt: skip


async def _shadows_of(store: ReplicatedStore, value: bytes, version) -> None:
    """What a write that failed before its first commit leaves: shadows on every target."""
    targets = store.targets(KEY)
    pieces = fragments_of(3, 2, value, store.min_block)
    staged = [await n.prepare(KEY, d) for n, (d, _) in zip(targets, pieces, strict=True)]
    await put_shadows(
        store,
        KEY,
        {n: (p, r.stamped(version)) for n, p, (_, r) in zip(targets, staged, pieces, strict=True)},
    )
    for n, p in zip(targets, staged, strict=True):
        await n.abort(p)  # the write failed: its staged files go, its shadows stay


async def test_shadows_of_a_version_no_node_committed_are_never_read(tmp_path):
    store = _store(tmp_path)
    await _shadows_of(store, b"never committed", (9, 1))
    # a later write that left one fragment (fewer than k) makes reads look for shadows
    targets = store.targets(KEY)
    (data, record), *_ = fragments_of(3, 2, b"partial", store.min_block)
    await targets[0].write(KEY, data, record.stamped((2, 1)))
    with pytest.raises(FragmentsUnavailable):  # not b"never committed"
        await store.get(KEY, PROTO)
    report = await store.repair()
    assert report.unrecoverable == [KEY]
    for node in targets[1:]:  # repair wrote nothing from the shadows
        assert (await node.state(KEY, tomb=True)).size is None


async def test_a_killed_writers_shadows_never_outlive_a_delete(tmp_path):
    """Shadows below a delete, left by a writer killed before its first commit: whether the
    delete's own collection or a repair drops the tombstones, the value stays deleted
    through every later repair (repair drops the shadows it outranks before collecting)."""
    store = _store(tmp_path)
    await store.set(KEY, PROTO.buffer.from_bytes(b"old"))
    await _shadows_of(store, b"in doubt", (1, 0))
    await store.delete(KEY)
    for _ in range(2):
        await store.flush()
        assert (await store.repair()).ok
        assert await store.get(KEY, PROTO) is None
    assert (await store.scrub()).ok
