"""A lost copy is damage, never absence: a key some nodes still hold never reads as absent
because the first node to answer lost its fragment or replica (a wiped disk, an object
deleted behind the store's back), and an absent key is not held up by a frozen node.

The quorum alone would let the first ``Rq`` absent answers decide; with a write-all quorum
(``Rq`` = 1, the coded default and the replicated write-all profile) one node that lost
its copy made a held key read as absent: ``exists`` False, a listing without it, a zarr
chunk read as its fill value. These tests make that node the first to answer."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest
from zarr.core.buffer import cpu, default_buffer_prototype

from swarmstore.storage import NodeWrapper, Record, ReplicatedStore, node_from
from swarmstore.storage._coded_maint import converge_coded
from swarmstore.storage._converge import converge as converge_replicated

PROTO = default_buffer_prototype()
KEY = "a/c/0"


class Slow(NodeWrapper):
    """A node whose async reads and probes take ``delay`` seconds (no sync path)."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        super().__init__(inner)
        self.supports_sync = False
        self.delay = delay

    async def read(self, key, start=0, end=None):
        await asyncio.sleep(self.delay)
        return await self.inner.read(key, start, end)

    async def state(self, key, *, tomb=None):
        await asyncio.sleep(self.delay)
        return await self.inner.state(key, tomb=tomb)


def _nodes(tmp_path: pathlib.Path, n: int) -> list[Slow]:
    return [Slow(node_from(f"file://{tmp_path}/n{i}")) for i in range(n)]


def _wipe(node, key: str) -> None:
    os.unlink(pathlib.Path(node.name.removeprefix("file://")) / key)


def _coded(tmp_path, nodes, state: str) -> ReplicatedStore:
    return ReplicatedStore(
        nodes, coding={"a/": (4, 2)}, state_dir=str(tmp_path / state), create=True,
        read_repair=False,
    )  # fmt: skip


def _first_answers_absent(store: ReplicatedStore, lost: int) -> list:
    """Wipe ``KEY`` on the first ``lost`` of its targets (the ones a fresh reader asks
    first) and make them answer at once, every other node 50 ms later."""
    targets = store.targets(KEY)
    for node in store.nodes:
        node.delay = 0.05
    for node in targets[:lost]:
        _wipe(node, KEY)
        node.delay = 0.0
    return targets


@pytest.mark.parametrize("lost", [1, 2])  # within m = 2
async def test_a_coded_key_with_lost_fragments_answering_first_is_still_there(tmp_path, lost):
    data = os.urandom(20_000)
    await _coded(tmp_path, _nodes(tmp_path, 6), "writer").set(KEY, cpu.Buffer.from_bytes(data))
    reader = _coded(tmp_path, _nodes(tmp_path, 6), "reader")
    _first_answers_absent(reader, lost)
    assert await reader.exists(KEY)
    assert (await reader.get(KEY, PROTO)).to_bytes() == data
    assert [k async for k in reader.list_prefix("a/")] == [KEY]


async def test_replicated_write_all_with_a_lost_replica_answering_first(tmp_path):
    nodes = _nodes(tmp_path, 3)
    writer = ReplicatedStore(nodes, replicas=3, write_quorum=3, state_dir=str(tmp_path / "w"))
    await writer.set(KEY, cpu.Buffer.from_bytes(b"acknowledged"))
    reader = ReplicatedStore(
        _nodes(tmp_path, 3), replicas=3, write_quorum=3, state_dir=str(tmp_path / "r"),
        read_repair=False,
    )  # fmt: skip
    assert reader.read_quorum == 1
    _first_answers_absent(reader, 1)
    assert await reader.exists(KEY)
    assert (await reader.get(KEY, PROTO)).to_bytes() == b"acknowledged"
    assert [k async for k in reader.list_prefix("a/")] == [KEY]


async def test_an_absent_coded_key_is_not_held_up_by_a_frozen_node(tmp_path):
    nodes = _nodes(tmp_path, 6)
    store = _coded(tmp_path, nodes, "s")
    store.targets(KEY)[-1].delay = 600  # frozen: never answers
    assert await asyncio.wait_for(store.get(KEY, PROTO), 60) is None
    assert not await asyncio.wait_for(store.exists(KEY), 60)


@pytest.mark.parametrize("coded", [False, True])
async def test_a_key_deleted_and_collected_under_repair_is_gone_not_unrecoverable(tmp_path, coded):
    """Repair lists keys, then fixes them one by one: a key another coordinator deleted and
    collected in between has nothing left anywhere. That is not a loss to report (the coded
    machine's repair called it unrecoverable when its sends came in a realistic order)."""
    kw = {"coding": {"a/": (4, 2)}} if coded else {"replicas": 3}
    store = ReplicatedStore(_nodes(tmp_path, 6), state_dir=str(tmp_path / "s"), create=True, **kw)
    await store.set(KEY, cpu.Buffer.from_bytes(b"short-lived"))
    await store.delete(KEY)
    await store.repair()  # collects the tombstones: nothing left
    converge = converge_coded if coded else converge_replicated
    out = await converge(store, KEY)
    assert out.winner is None and out.gone
    for node in store.targets(KEY)[:3]:  # only damage left: no winner, and not gone
        await node.write(KEY, b"rot", Record.of(b"the bytes it had"))
    out = await converge(store, KEY)
    assert not out.gone
