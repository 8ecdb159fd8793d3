"""xarray's Zarr backend test classes, subclassed with every swarmstore store (issue 23).

xarray's ``xarray/tests/`` from the sdist of the installed version, run in their own pytest
process with xarray's configuration, through ``peer_xarray``: ``TestZarrDictStore`` and
``TestZarrDirectoryStore`` (stock) and one subclass of them per swarmstore mode, each test
compared with its stock twin in the same run. The selection is in ``peer_suite.SPECS`` and
docs/peers.md.
"""

from __future__ import annotations

import peer_runner
import pytest
from peer_suite import SPECS, peer_run, report_findings, unknown
from swarm_stores import MODES

pytestmark = pytest.mark.timeout(1800)
SPEC = SPECS["xarray"]


@pytest.fixture(scope="module")
def xarray_run() -> peer_runner.Run:
    return peer_run("xarray")


def test_xarray_run_is_sound(xarray_run: peer_runner.Run) -> None:
    """Stock tests ran, and every mode ran its share next to them."""
    assert xarray_run.counts("stock")["passed"] > 50, xarray_run.table()
    for mode in MODES:
        assert xarray_run.counts(mode)["passed"] >= 5, xarray_run.table()


@pytest.mark.parametrize("mode", list(MODES))
def test_xarray_zarr_backend_over_swarmstore(xarray_run: peer_runner.Run, mode: str) -> None:
    """No xarray Zarr backend test fails over ``mode`` unless it fails over stock too."""
    findings = unknown("xarray", xarray_run.beyond_stock(mode))
    confirmed, flaky = SPEC.confirm(xarray_run, findings)
    assert not confirmed, report_findings(confirmed, flaky)
