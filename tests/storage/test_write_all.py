"""The write-all profile (``write_quorum = replicas``, so the read quorum is 1): what it buys
(a read asks one replica and is still never stale) and what it costs (a write needs every
target: one down fails it), on local nodes across foreign readers (issue 16's R=3 goal)."""

from __future__ import annotations

import os
import pathlib

import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.errors import QuorumError
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()


def buf(data: bytes):
    return PROTO.buffer.from_bytes(data)


def make(tmp_path: pathlib.Path) -> tuple[ReplicatedStore, list[Faults]]:
    faults = [Faults() for _ in range(3)]
    nodes = [
        FaultyStore(LocalStore(tmp_path / f"node{i}"), faults[i], name=f"node{i}") for i in range(3)
    ]
    store = ReplicatedStore(nodes, replicas=3, write_quorum=3, state_dir=tmp_path / "state")
    return store, faults


def reader(tmp_path: pathlib.Path, first: str) -> ReplicatedStore:
    """Another host's store (fresh nodes, own state dir) whose router tries ``first``."""
    specs = [NodeSpec(f"file://{tmp_path}/node{i}", name=f"node{i}") for i in range(3)]
    state = tmp_path / f"reader-{os.urandom(4).hex()}"
    store = ReplicatedStore(specs, replicas=3, write_quorum=3, state_dir=state)
    for _ in range(20):
        for node in store.nodes:
            store.router.observe(node.name, 0.0001 if node.name == first else 0.5, 1000)
    return store


def test_write_all_means_a_read_quorum_of_one():
    specs = [NodeSpec(f"memory://wa-{i}", name=f"m{i}") for i in range(3)]
    store = ReplicatedStore(specs, replicas=3, write_quorum=3)
    assert (store.write_quorum, store.read_quorum) == (3, 1)


async def test_a_read_asks_one_replica_and_every_replica_is_current(tmp_path):
    store, faults = make(tmp_path)
    await store.set("k", buf(b"v1"))
    await store.set("k", buf(b"v2"))
    before = [dict(f.counts) for f in faults]
    assert (await store.get("k", PROTO)).to_bytes() == b"v2"
    asked = [f.counts.get("get", 0) + f.counts.get("head", 0) - b.get("get", 0) - b.get("head", 0)
             for f, b in zip(faults, before, strict=True)]  # fmt: skip
    assert sorted(asked) == [0, 0, 1]  # one replica read, none probed
    for i in range(3):  # whichever replica another host asks, it gets the acknowledged value
        other = reader(tmp_path, f"node{i}")
        assert (await other.get("k", PROTO)).to_bytes() == b"v2"
        await other.aclose()


async def test_a_write_fails_while_any_target_is_down_and_the_old_value_stays(tmp_path):
    """The cost: with one of three targets down, a write or a delete cannot be acknowledged
    (a majority quorum would have taken it); once repaired every reader agrees."""
    store, faults = make(tmp_path)
    await store.set("k", buf(b"v1"))
    faults[1].down = True
    with pytest.raises(QuorumError):
        await store.set("k", buf(b"v2"))
    with pytest.raises(QuorumError):
        await store.delete("k")
    faults[1].down = False
    await store.repair()
    got = {await read(tmp_path, f"node{i}") for i in range(3)}
    assert len(got) == 1 and got <= {b"v1", b"v2", None}  # failed: any, then agreed
    await store.set("k", buf(b"v3"))  # back to three targets: writes are acknowledged again
    assert {await read(tmp_path, f"node{i}") for i in range(3)} == {b"v3"}


async def read(tmp_path: pathlib.Path, first: str) -> bytes | None:
    other = reader(tmp_path, first)
    try:
        got = await other.get("k", PROTO)
        return None if got is None else got.to_bytes()
    finally:
        await other.aclose()
