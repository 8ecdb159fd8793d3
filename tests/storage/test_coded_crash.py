"""kill -9 a writer of an erasure-coded key between or inside any two of its commits.

The writer (``coded_writer.py``, a real process) overwrites one RS(4,2) key over six local
directories, printing ``commit`` after each fragment a node published and ``acked i``
after each write returned. Each trial kills it as soon as the ``j``-th commit of a write
is reported (the kill lands inside the next step, whatever the machine's speed). Then the
key must read as the last acknowledged value or the one being written, never an error
and never a mix, and repair must leave every fragment healthy.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from swarmstore.storage import ReplicatedStore

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from coded_writer import value  # noqa: E402


def _kill_after(root: pathlib.Path, writes: int, commit: int) -> int:
    """Run the writer until the ``commit``-th commit of write number ``writes``; kill -9.
    Returns the last acknowledged write's number."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "coded_writer.py"), str(root), str(root / "state")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    acked, commits = -1, 0
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            assert time.monotonic() < deadline, "the writer is stuck"
            if line.startswith("acked"):
                acked, commits = int(line.split()[1]), 0
            elif line.startswith("commit"):
                commits += 1
                if acked + 1 == writes and commits == commit:
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the writer died before the kill"
    return acked


@pytest.mark.parametrize("commit", [1, 2, 3, 4, 5])
def test_a_coded_write_killed_inside_any_commit_leaves_old_or_new(tmp_path, commit):
    acked = _kill_after(tmp_path, writes=2, commit=commit)
    assert acked == 1
    nodes = [f"file://{tmp_path}/n{i}" for i in range(6)]
    store = ReplicatedStore(nodes, coding={"": (4, 2)}, state_dir=str(tmp_path / "s2"))
    got = store.get_sync("k").to_bytes()
    assert got in (value(1), value(2)), "neither the acknowledged value nor the new one"
    report = store.repair_sync()
    assert report.ok, report
    assert store.scrub_sync().ok
    again = store.get_sync("k").to_bytes()
    assert again in (value(1), value(2))
    if got == value(2):
        assert again == value(2), "a value once read went back"
