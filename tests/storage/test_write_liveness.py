"""A write returns once W replicas acknowledged it, whichever step was slow: a replica whose
phase 1 came after the grace still counts when it commits (found by the state machine on a
saturated machine: its late_commit rule hung with one commit held and another replica's
phase 1 late)."""

from __future__ import annotations

import asyncio
import pathlib

import dask
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

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
