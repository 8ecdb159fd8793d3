"""What the tests of tests/peers share: one run per peer per session, and how findings read."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import peer_runner
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

#: ``SWARMSTORE_PEERS=full``: every parameter combination (the CI run samples, see
#: docs/peers.md); takes tens of minutes per peer
FULL = os.environ.get("SWARMSTORE_PEERS", "") == "full"

RUNS: dict[str, peer_runner.Run] = {}


def peer_run(name: str, start: Callable[[], peer_runner.Run]) -> peer_runner.Run:
    """The session's run of peer ``name`` (started by ``start`` on first use)."""
    if peer_runner.source_dir(name) is None:
        pytest.skip(f"{name}'s own tests are not fetched (run `make peer-tests`)")
    if name not in RUNS:
        RUNS[name] = start()
    run = RUNS[name]
    broken = run.broken()
    if broken:
        pytest.fail(f"the {name} run itself failed, so it says nothing: {broken}")
    return run


def report_findings(confirmed: list[peer_runner.Finding], flaky: list[peer_runner.Finding]) -> str:
    lines = [f"{len(confirmed)} failures beyond stock, each confirmed by re-running it alone:"]
    lines += [str(f) for f in confirmed]
    if flaky:
        lines.append(f"({len(flaky)} more did not fail again alone: load flakes)")
        lines += [f"  {f.nodeid}" for f in flaky]
    return "\n".join(lines)
