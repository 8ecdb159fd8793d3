"""The peers' own suites over swarmstore: which peers this session runs, and their tables.

Each peer runs once per session in its own pytest process (``peer_suite``, ``peer_runner``);
the tests here read that run. Their sources come from ``make peer-tests``; a peer not fetched
is skipped with the reason, never run from anywhere else.
"""

from __future__ import annotations

import pytest
from peer_suite import KNOWN_SEEN, SPECS, WANTED, finished


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note the peers whose tests were selected, so their runs can start together."""
    for item in items:
        stem = item.path.stem
        if stem.startswith("test_peer_") and stem[len("test_peer_") :] in SPECS:
            WANTED.add(stem[len("test_peer_") :])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    runs = finished()
    if not runs:
        return
    terminalreporter.section("peers: outcomes per store (see docs/peers.md)")
    for run in runs:
        terminalreporter.write_line(run.table())
        for t in run.of("stock"):
            if t.outcome in ("failed", "error"):
                first = (t.summary.strip().splitlines() or [""])[0]
                terminalreporter.write_line(f"  stock {t.outcome}: {t.nodeid}: {first[:200]}")
        if run.leftovers:
            terminalreporter.write_line(f"  left to the garbage collector: {len(run.leftovers)}")
    for nodeid, cause in KNOWN_SEEN:
        terminalreporter.write_line(f"  known defect: {nodeid}: {cause}")
