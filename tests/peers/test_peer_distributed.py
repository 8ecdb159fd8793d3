"""distributed's own tests with SwarmPlugin in every scheduler they start (issue 23).

distributed's ``distributed/tests/`` from its release tag, run in their own pytest process
with distributed's configuration, through ``peer_distributed``: every selected test runs
twice, stock and with ``SwarmPlugin()`` added to each ``Scheduler`` it builds, side by side.
The selection is in ``peer_suite.SPECS`` and docs/peers.md.
"""

from __future__ import annotations

import peer_runner
import pytest
from peer_suite import SPECS, peer_run, report_findings

pytestmark = pytest.mark.timeout(1800)
SPEC = SPECS["distributed"]


@pytest.fixture(scope="module")
def distributed_run() -> peer_runner.Run:
    return peer_run("distributed")


def test_distributed_run_is_sound(distributed_run: peer_runner.Run) -> None:
    """Stock tests ran, and each ran again with the plugin."""
    assert distributed_run.counts("stock")["passed"] > 50, distributed_run.table()
    assert distributed_run.counts("swarm")["passed"] > 50, distributed_run.table()


def test_distributed_suite_with_swarmplugin(distributed_run: peer_runner.Run) -> None:
    """No distributed test fails with SwarmPlugin unless it fails stock too."""
    run = distributed_run
    confirmed, flaky = SPEC.confirm(run, run.beyond_stock("swarm"))
    assert not confirmed, report_findings(confirmed, flaky)


def test_distributed_run_leaves_nothing_to_the_gc(distributed_run: peer_runner.Run) -> None:
    """Nothing swarmstore opened in the schedulers is left for the garbage collector."""
    assert not distributed_run.leftovers, peer_runner.describe_leftovers(distributed_run)
