"""Benchmark lines can fail: each is shown to MISS on a mutated swarmstore (issue 13).

A line whose goal an unbounded cache, or a do-nothing replication, would meet measures
nothing. These run the benchmarks' own measuring functions at a small scale, once as
shipped and once with the property under test removed, and check the verdicts differ the
right way. They check verdicts, never timings: each mutation changes a count or a size.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import zarr
from zarr.storage import LocalStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cache  # noqa: E402


def _array(path: pathlib.Path) -> int:
    """64 chunks of 64 KiB of incompressible floats; the bytes they take on disk."""
    data = np.random.default_rng(0).random(64 * 16384, dtype="f4")
    zarr.create_array(LocalStore(path), shape=data.shape, chunks=(16384,), dtype="f4")[:] = data
    return bench_cache.dir_size(path)


def test_an_unbounded_disk_tier_misses_the_bound_line(tmp_path: pathlib.Path) -> None:
    stored = _array(tmp_path / "data")
    bound = stored // 2
    shipped = bench_cache.bound_line(LocalStore(tmp_path / "data"), tmp_path / "a", bound=bound)
    unbounded = bench_cache.bound_line(
        LocalStore(tmp_path / "data"), tmp_path / "b", bound=bound, tier_bytes=None
    )
    assert bench_cache.bound_tested(shipped), "the bounded tier never evicted: nothing tested"
    assert unbounded.passed is False, unbounded.text()  # the mutation is caught
    assert unbounded.ours > 1.5 * bound  # it kept about all of the array
    assert shipped.ours < unbounded.ours


def test_the_no_preemption_bound_counts_what_the_threads_run_now(monkeypatch) -> None:
    """Scenario h's second urgent-job bound: chains wait for the running tasks, then take
    the thread free first (a count of seconds, computed, not timed)."""
    import _compute_scenarios as cs

    now = 1000.0
    monkeypatch.setattr(cs.time, "perf_counter", lambda: now)
    monkeypatch.setattr(cs, "_busy", {})
    assert cs.no_preemption_bound(6, 6, 0.2) == 0.2  # idle threads: the critical path
    assert cs.no_preemption_bound(2, 4, 1.0) == 2.0  # two chains each, one after another
    cs._busy.update({1: (now - 0.5, 1.0), 2: (now - 0.1, 1.0)})  # 0.5 s and 0.9 s left
    assert abs(cs.no_preemption_bound(2, 2, 0.2) - 0.9) < 1e-9  # both on the earlier one
    assert abs(cs.no_preemption_bound(2, 3, 0.2) - 1.1) < 1e-9  # then the later one too
