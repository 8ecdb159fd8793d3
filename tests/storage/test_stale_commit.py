"""A commit whose phase-1 view is gone counts towards no quorum (found by the coded
machine: a write acknowledged by every node while none held it).

Between a write's phase 1 and its commit, a delete's tombstones can be collected (a read
repair or another coordinator finishing the delete). The node then holds nothing where
phase 1 saw a tombstone; the staged write cannot tell that tombstone from a newer delete
that came and went, so it must not write. It used to answer "superseded", which counts as
an acknowledgement (a newer value stands in its place): here none does. Now the commit
answers "gone", the coordinator counts it as a failure, and the write starts over with a
fresh phase 1 -- a new write after that delete.
"""

from __future__ import annotations

import asyncio

import pytest
from zarr.core.buffer import cpu, default_buffer_prototype

from swarmstore.storage import NodeWrapper, Record, ReplicatedStore, node_from

PROTO = default_buffer_prototype()
KEY = "a/c/0"


class CollectsFirst(NodeWrapper):
    """A node whose next ``armed`` commits find the key's tombstone collected first (what
    a concurrent collection does between the phases)."""

    armed = 0

    async def commit(self, pending, record, **kw):
        if self.armed:
            self.armed -= 1
            st = await self.inner.state(pending.key, tomb=True)
            if st.tomb is not None:
                await self.inner.unbury(pending.key, st.tomb)
        return await self.inner.commit(pending, record, **kw)

    def commit_now(self, pending, record, **kw):  # the sync write path's commit
        if self.armed:
            self.armed -= 1
            st = self.inner.state_now(pending.key, tomb=True)
            if st.tomb is not None:
                self.inner.unbury_now(pending.key, st.tomb)
        return self.inner.commit_now(pending, record, **kw)


def _nodes(tmp_path, kind: str, n: int) -> list[CollectsFirst]:
    url = f"file://{tmp_path}/n{{}}" if kind == "file" else f"memory://stale-{tmp_path.name}-{{}}"
    for i in range(n):
        (tmp_path / f"n{i}").mkdir(exist_ok=True)
    return [CollectsFirst(node_from(url.format(i))) for i in range(n)]


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_a_commit_after_its_tombstone_was_collected_is_gone_and_writes_nothing(
    tmp_path, kind
):
    (node,) = _nodes(tmp_path, kind, 1)
    await node.bury(KEY, Record.tombstone((2, 7)), await node.state(KEY, tomb=True))
    pending = await node.prepare(KEY, b"new")
    assert pending.seen.tomb is not None
    node.armed = 1
    assert await node.commit(pending, Record.of(b"new", version=(3, 7))) == "gone"
    assert (await node.state(KEY, tomb=True)).size is None


@pytest.mark.parametrize("coded", [False, True], ids=["replicated", "coded"])
@pytest.mark.parametrize("sync", [False, True], ids=["loop", "sync"])
async def test_a_write_whose_commits_went_stale_starts_over_and_lands(tmp_path, coded, sync):
    n = 5 if coded else 3
    nodes = _nodes(tmp_path, "file", n)
    kw = {"coding": {"a/": (3, 2)}} if coded else {"replicas": 3, "write_quorum": 3}
    store = ReplicatedStore(nodes, state_dir=str(tmp_path / "s"), read_repair=False, **kw)
    for node in nodes:  # a delete left its tombstones (its collection not yet run)
        await node.bury(KEY, Record.tombstone((2, 7)), await node.state(KEY, tomb=True))
        node.armed = 1  # ... and runs between this write's phases
    if sync and not coded:
        await asyncio.to_thread(store.set_sync, KEY, cpu.Buffer.from_bytes(b"B"))
    else:
        await store.set(KEY, cpu.Buffer.from_bytes(b"B"))
    assert (await store.get(KEY, PROTO)).to_bytes() == b"B"
    held = [(await node.state(KEY, tomb=True)).size is not None for node in nodes]
    assert all(held), held
