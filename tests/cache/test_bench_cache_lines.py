"""bench_cache's scan line can fail: with LRU as "ours" it compares LRU with itself and
MISSes; as shipped (S3-FIFO) it PASSes. Hit rates are counts, never timings."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cache  # noqa: E402


def test_the_scan_line_passes_as_shipped_and_misses_with_lru() -> None:
    shipped = bench_cache.scan_line()
    mutated = bench_cache.scan_line("lru")
    assert shipped.passed is True, shipped.text()
    assert mutated.passed is False, mutated.text()
    assert mutated.ratio == 1.0  # deterministic: the same seeded workload both sides
