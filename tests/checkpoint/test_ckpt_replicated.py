"""Checkpoints over a ReplicatedStore survive the loss of R-1 nodes (issue 18)."""

from __future__ import annotations

import contextlib
import shutil

import dask
import numpy as np
import pytest
import zarr

from swarmstore.checkpoint import CheckpointManager, node_loss_drill
from swarmstore.storage import ReplicatedStore


def _replicated(tmp_path, n=3, replicas=3):
    """R replicas written to all R (W = R), so that any one survivor can answer a read."""
    nodes = [f"file://{tmp_path}/node{i}" for i in range(n)]
    return ReplicatedStore(
        nodes, replicas=replicas, write_quorum=replicas, state_dir=str(tmp_path / "st")
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_drill_restores_every_step_after_killing_r_minus_1_s3_nodes(tmp_path):
    """Three moto servers in their own processes, R=3; two are killed after the saves."""
    from swarmstore.storage import NodeSpec
    from swarmstore.testing import moto_server

    # W=3 needs every server: a generous connect timeout keeps a saturated machine's slow
    # moto servers from reading as down (the dead ones refuse connections at once)
    with (
        dask.config.set({"swarmstore.network.s3-connect-timeout": "30s"}),
        contextlib.ExitStack() as servers,
    ):
        stacks = [servers.enter_context(contextlib.ExitStack()) for _ in range(3)]
        endpoints = [s.enter_context(moto_server(process=True)) for s in stacks]
        nodes = []
        for i, endpoint in enumerate(endpoints):
            bucket = endpoint.make_bucket()
            nodes.append(NodeSpec(f"s3://{bucket}/ckpt", name=f"s3-{i}",
                                  storage_options=endpoint.storage_options()))  # fmt: skip
        store = ReplicatedStore(nodes, replicas=3, write_quorum=3, state_dir=str(tmp_path / "st"))
        messages: list[str] = []

        def lose():  # two of the three S3 servers die
            stacks[0].close()
            stacks[2].close()

        report = node_loss_drill(
            store, lose, steps=3, shape=(64, 64), chunk=16, progress=messages.append
        )
    assert report.intact and report.steps == [0, 1, 2], (report, messages)
    assert report.verified_objects > 0 and "taking nodes away" in messages


def test_the_drill_reports_data_lost_beyond_r_minus_1(tmp_path):
    store = _replicated(tmp_path, replicas=2)

    def lose():  # with R=2, losing two nodes loses some chunks: the drill must say so
        for i in (0, 1):
            shutil.rmtree(tmp_path / f"node{i}")

    report = node_loss_drill(store, lose, steps=2, shape=(64, 64), chunk=16)
    assert not report.intact


def test_a_session_on_a_replicated_store_after_a_node_loss(tmp_path):
    store = _replicated(tmp_path)
    mgr = CheckpointManager(store)
    mgr.save({"x": np.zeros((16, 16))}, encoding={"x": {"chunks": (4, 4)}})
    shutil.rmtree(tmp_path / "node1")
    fresh = CheckpointManager(_replicated(tmp_path))
    assert fresh.verify_report().ok
    np.testing.assert_array_equal(fresh.restore()["x"][:], np.zeros((16, 16)))
    assert zarr.open_array(fresh.open_store(), path="x", mode="r").shape == (16, 16)
