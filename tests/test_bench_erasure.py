"""bench_erasure's bytes line can fail: with the coding removed (every key replicated)
the measured side stores R=3's bytes and the line MISSes (issue 13's rule, issue 20's
bench). A verdict on byte counts, never on timings."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_erasure  # noqa: E402


async def test_the_bytes_line_passes_coded_and_misses_replicated(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_erasure, "emit", lambda line: line)
    shipped = await bench_erasure.bytes_line(tmp_path / "a", 4, 2)
    mutated = await bench_erasure.bytes_line(tmp_path / "b", 4, 2, coding=None)
    assert shipped.passed is True, shipped.text()
    assert mutated.passed is False, mutated.text()
    assert abs(mutated.ours - mutated.peer) < 0.01  # it stored what R=3 stores
