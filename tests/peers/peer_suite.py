"""What the tests of tests/peers share: each peer's selection, one run per peer per session.

The peer runs are separate processes, so they start together when the first peers test
needs one (two at a time: the CI machine has two cores and the rest of our suite runs on
one), and each test module waits only for its own. ``SWARMSTORE_PEERS=full`` runs every
parameter combination over every mode instead of the CI sample (docs/peers.md): tens of
minutes per peer.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import peer_runner
import pytest
from peer_known import known_cause

FULL = os.environ.get("SWARMSTORE_PEERS", "") == "full"
PARALLEL = max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class Spec:
    """One peer's run: the files (or test ids) it selects, our plugin, its environment."""

    peer: str
    args: list[str]
    plugins: list[str]
    env: dict[str, str] = field(default_factory=dict)
    addopts: str = ""

    def start(self) -> peer_runner.Run:
        return peer_runner.run(
            self.peer, self.args, self.plugins, addopts=self.addopts, env=self.env
        )

    def confirm(
        self, run: peer_runner.Run, findings: list[peer_runner.Finding]
    ) -> tuple[list[peer_runner.Finding], list[peer_runner.Finding]]:
        return peer_runner.confirm(run, findings, self.plugins, addopts=self.addopts, env=self.env)


def _sample(per: int, modes: int) -> dict[str, str]:
    return (
        {"PEER_SAMPLE": "0", "PEER_MODES": "0"}
        if FULL
        else {
            "PEER_SAMPLE": str(per),
            "PEER_MODES": str(modes),
        }
    )


SPECS: dict[str, Spec] = {
    "zarr": Spec(
        "zarr",
        [
            "tests/test_api.py",
            "tests/test_array.py",
            "tests/test_group.py",
            "tests/test_indexing.py",
            "tests/test_codecs/test_sharding.py",
        ],
        ["peer_zarr"],
        env=_sample(1, 2),
    ),
    "xarray": Spec("xarray", ["xarray/tests/test_backends.py"], ["peer_xarray"], _sample(1, 1)),
    "distributed": Spec(
        "distributed",
        [
            "distributed/tests/test_priorities.py",
            "distributed/tests/test_resources.py",
            "distributed/tests/test_active_memory_manager.py",
            "distributed/tests/test_steal.py",
            "distributed/tests/test_scheduler.py",
            "distributed/tests/test_client.py",
        ],
        ["peer_distributed"],
        env={"PEER_HEAVY": "1"}
        if FULL
        else {
            "PEER_KEEP": "test_active_memory_manager.py:1/2,test_steal.py:1/3,"
            "test_scheduler.py:1/8,test_client.py:1/40",
            "PEER_SAMPLE": "2",
        },
        addopts="-p no:asyncio -p no:legacypath --strict-markers",
    ),
}

#: the peers whose tests this session selected (set by conftest at collection)
WANTED: set[str] = set()
RUNS: dict[str, Future[peer_runner.Run]] = {}
#: (test id, known defect) of findings put down to a known defect this session
KNOWN_SEEN: list[tuple[str, str]] = []
_POOL: ThreadPoolExecutor | None = None


def _start(names: set[str]) -> None:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(PARALLEL, thread_name_prefix="peer-run")
    for name in sorted(names, key=list(SPECS).index):
        if name not in RUNS and peer_runner.source_dir(name) is not None:
            RUNS[name] = _POOL.submit(SPECS[name].start)


def peer_run(name: str) -> peer_runner.Run:
    """The session's run of peer ``name``; skips when its sources are not fetched."""
    if peer_runner.source_dir(name) is None:
        pytest.skip(f"{name}'s own tests are not fetched (run `make peer-tests`)")
    WANTED.add(name)
    # in one process, every selected peer starts at once; under xdist every worker collects
    # every test, so each starts only the peer whose tests it runs (else each peer ran twice)
    _start({name} if os.environ.get("PYTEST_XDIST_WORKER") else WANTED)
    run = RUNS[name].result()
    broken = run.broken()
    if broken:
        pytest.fail(f"the {name} run itself failed, so it says nothing: {broken}")
    return run


def finished() -> list[peer_runner.Run]:
    return [f.result() for f in RUNS.values() if f.done() and f.exception() is None]


def unknown(peer: str, findings: list[peer_runner.Finding]) -> list[peer_runner.Finding]:
    """``findings`` less those put down to a known defect (``peer_known.CAUSES``), which
    are noted in ``KNOWN_SEEN`` for the end-of-run summary."""
    left = []
    for f in findings:
        cause = known_cause(peer, f.mode, f.summary)
        if cause is None:
            left.append(f)
        else:
            KNOWN_SEEN.append((f.nodeid, cause))
    return left


def report_findings(confirmed: list[peer_runner.Finding], flaky: list[peer_runner.Finding]) -> str:
    lines = [f"{len(confirmed)} failures beyond stock, each confirmed by re-running it alone:"]
    lines += [str(f) for f in confirmed]
    if flaky:
        lines.append(f"({len(flaky)} more did not fail again alone: load flakes)")
        lines += [f"  {f.nodeid}" for f in flaky]
    return "\n".join(lines)
