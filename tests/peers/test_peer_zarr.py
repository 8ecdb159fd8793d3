"""zarr's own store-parametrised tests over every swarmstore store (issue 23).

zarr 3's ``tests/`` from the sdist of the installed version, run in their own pytest process
with zarr's configuration (warnings are errors there), through ``peer_zarr``: each test
parametrised over "memory"/"local" stores also runs over each swarmstore mode, and is
compared with its stock twin in the same run. The selection is in ``peer_suite.SPECS`` and
docs/peers.md.
"""

from __future__ import annotations

import peer_runner
import pytest
from peer_suite import SPECS, peer_run, report_findings, unknown
from swarm_stores import MODES

pytestmark = pytest.mark.timeout(1800)
SPEC = SPECS["zarr"]


@pytest.fixture(scope="module")
def zarr_run() -> peer_runner.Run:
    return peer_run("zarr")


def test_zarr_run_is_sound(zarr_run: peer_runner.Run) -> None:
    """Stock tests ran, and every mode ran its share next to them."""
    assert zarr_run.counts("stock")["passed"] > 100, zarr_run.table()
    for mode in MODES:
        assert zarr_run.counts(mode)["passed"] >= 10, zarr_run.table()


@pytest.mark.parametrize("mode", list(MODES))
def test_zarr_suite_over_swarmstore(zarr_run: peer_runner.Run, mode: str) -> None:
    """No zarr test fails over ``mode`` unless it fails over the stock store too."""
    confirmed, flaky = SPEC.confirm(zarr_run, unknown("zarr", zarr_run.beyond_stock(mode)))
    assert not confirmed, report_findings(confirmed, flaky)


def test_zarr_run_leaves_nothing_to_the_gc(zarr_run: peer_runner.Run) -> None:
    """Nothing swarmstore opened during zarr's tests is left for the garbage collector."""
    assert not zarr_run.leftovers, peer_runner.describe_leftovers(zarr_run)
