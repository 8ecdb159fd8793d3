"""Slow is not down: a write returns once W replicas acknowledged it, whichever step was
slow, and a read with a replica down waits for a slow one rather than fail. Both found by
the state machine on a saturated machine: its late_commit rule hung with one commit held
and another replica's phase 1 late; over S3 a read with one node down raised
ReplicaUnavailable because the other probe took longer than the grace."""

from __future__ import annotations

import asyncio
import pathlib

import dask
import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.errors import QuorumError
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()


def make(tmp_path: pathlib.Path) -> tuple[ReplicatedStore, list[Faults]]:
    faults = [Faults() for _ in range(3)]
    nodes = [
        FaultyStore(LocalStore(tmp_path / f"node{i}"), faults[i], name=f"node{i}") for i in range(3)
    ]
    return ReplicatedStore(nodes, replicas=3, state_dir=tmp_path / "state"), faults


async def test_a_late_phase_one_counts_towards_the_quorum_while_a_commit_hangs(tmp_path):
    with dask.config.set({"swarmstore.storage.write-grace": 0.01}):
        store, faults = make(tmp_path)  # R=3, W=2
        await store.set("k", PROTO.buffer.from_bytes(b"v1"))
        faults[0].latency = 2.0  # its phase 1 lands long after the write went on without it
        faults[1].hold_next["commit"], faults[1].gate = 1, True  # a commit that hangs
        try:
            write = asyncio.ensure_future(store.set("k", PROTO.buffer.from_bytes(b"v2")))
            done, _ = await asyncio.wait({write}, timeout=60)
            assert write in done, "the write waited on the hung commit, not the late replica"
            write.result()
        finally:
            faults[1].gate = False
            faults[0].latency = 0.0
        await store.flush()
        specs = [NodeSpec(f"file://{tmp_path}/node{i}", name=f"node{i}") for i in range(3)]
        reader = ReplicatedStore(specs, replicas=3, state_dir=tmp_path / "reader")
        assert (await reader.get("k", PROTO)).to_bytes() == b"v2"
        await reader.aclose()
        await store.aclose()


async def test_a_read_with_a_replica_down_waits_for_a_slow_one_rather_than_fail(tmp_path):
    with dask.config.set({"swarmstore.storage.write-grace": 0.01}):
        store, faults = make(tmp_path)  # R=3, W=2, Rq=2
        await store.set("k", PROTO.buffer.from_bytes(b"v1"))
        for _ in range(20):  # the router tries node0 first (it measured it fastest)
            for node in store.nodes:
                store.router.observe(node.name, 0.0001 if node.name == "node0" else 0.5, 10)
        # the probe sent with the read goes to the next target in order: make it the slow
        # one (alive, slower than the grace), and the last one down
        others = [int(n.name[-1]) for n in store.targets("k") if n.name != "node0"]
        slow, down = faults[others[0]], faults[others[1]]
        slow.latency, down.down = 1.0, True
        try:
            assert (await store.get("k", PROTO)).to_bytes() == b"v1"
            assert slow.counts.get("head", 0) >= 1  # the slow replica's answer counted
        finally:
            slow.latency, down.down = 0.0, False
        await store.flush()
        await store.aclose()


async def test_a_write_whose_quorum_waits_on_a_frozen_node_fails_within_the_node_timeout(
    tmp_path,
):
    """R=3, W=2: one node frozen (a SIGSTOPped host: no answer, no reset), another
    refusing commits. Only the frozen node could make the quorum, so the write used to
    wait on it for ever (the state machine's late_commit rule hung the same way). It
    fails with QuorumError once ``storage.node-timeout`` passed, and the node's request,
    if it ever lands, is a late commit the version protocol refuses or keeps."""
    config = {"swarmstore.storage.write-grace": 0.01, "swarmstore.storage.node-timeout": 0.5}
    with dask.config.set(config):
        store, faults = make(tmp_path)  # R=3, W=2
        await store.set("k", PROTO.buffer.from_bytes(b"v1"))
        faults[0].frozen, faults[1].fail_commits = True, True
        try:
            write = asyncio.ensure_future(store.set("k", PROTO.buffer.from_bytes(b"v2")))
            done, _ = await asyncio.wait({write}, timeout=60)
            assert write in done, "the write waited on the frozen node past its timeout"
            with pytest.raises(QuorumError, match="node0"):
                write.result()
            faults[1].fail_writes = True  # its tombstone refused too
            delete = asyncio.ensure_future(store.delete("k"))
            done, _ = await asyncio.wait({delete}, timeout=60)
            assert delete in done, "the delete waited on the frozen node past its timeout"
            with pytest.raises(QuorumError):
                delete.result()
        finally:
            faults[0].frozen, faults[1].fail_commits = False, False
            faults[1].fail_writes = False
        await store.flush()
        got = await store.get("k", PROTO)  # either failed op may have taken effect
        assert (got and got.to_bytes()) in (b"v1", b"v2", None)
        await store.aclose()


async def test_repair_scrub_and_create_give_up_on_a_frozen_node_within_the_node_timeout(
    tmp_path,
):
    """Maintenance and conditional creates waited on a frozen node for ever (listing,
    examining, copying; a create walks its targets one by one). Each step on one node is
    bounded by ``storage.node-timeout``: the node counts as down for that step."""
    config = {"swarmstore.storage.write-grace": 0.01, "swarmstore.storage.node-timeout": 0.5}
    with dask.config.set(config):
        store, faults = make(tmp_path)  # R=3, W=2
        await store.set("k", PROTO.buffer.from_bytes(b"v1"))
        first = store.targets("new")[0]
        frozen = faults[int(first.name[-1])]
        frozen.frozen = True
        try:
            for op in (store.scrub(), store.repair()):
                task = asyncio.ensure_future(op)
                done, _ = await asyncio.wait({task}, timeout=60)
                assert task in done, "maintenance waited on the frozen node"
                assert first.name in str(task.result())  # reported, not silently skipped
            create = asyncio.ensure_future(
                store.set_if_not_exists("new", PROTO.buffer.from_bytes(b"c"))
            )
            done, _ = await asyncio.wait({create}, timeout=60)
            assert create in done, "the create waited on its frozen first node"
            create.result()  # the two others make its majority
        finally:
            frozen.frozen = False
        await store.flush()
        assert (await store.get("new", PROTO)).to_bytes() == b"c"
        await store.aclose()
