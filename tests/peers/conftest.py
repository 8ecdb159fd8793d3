"""The peers' own suites over swarmstore: the end-of-run tables.

Each peer runs once per session in its own pytest process (see ``peer_runner``); the tests
here read that run (``peer_suite.peer_run``). Their sources come from ``make peer-tests``;
a peer not fetched is skipped with the reason, never run from anywhere else.
"""

from __future__ import annotations

import pytest
from peer_suite import RUNS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("peers: outcomes per store (see docs/peers.md)")
    for run in RUNS.values():
        terminalreporter.write_line(run.table())
        if run.leftovers:
            terminalreporter.write_line(f"  left to the garbage collector: {len(run.leftovers)}")
