"""bench_peercache's lines can fail: a peer tier that served nothing (the same S3 bytes,
the same times as without it) MISSes every line; one that served every read PASSes."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_peercache  # noqa: E402


def _run(on_bytes: int, on_wall: float, on_times: list[float]) -> dict:
    off_times = [0.06 + i * 1e-3 for i in range(30)]
    res: dict = {}
    for s in ("scale", "stencil", "client"):
        off = (24 << 20, 2.0, off_times, 0)
        on = (on_bytes, on_wall, on_times, 30 if on_bytes == 0 else 0)
        res[s] = {True: on, False: off}
    return res


def test_a_peer_tier_that_serves_nothing_misses_every_line() -> None:
    off_times = [0.06 + i * 1e-3 for i in range(30)]
    lines = bench_peercache.lines_of(_run(24 << 20, 2.0, off_times), 24)
    assert len(lines) == 7 and all(ln.passed is False for ln in lines), [ln.text() for ln in lines]


def test_a_peer_tier_that_serves_every_read_passes() -> None:
    lines = bench_peercache.lines_of(_run(0, 0.3, [0.005] * 30), 24)
    assert all(ln.passed is True for ln in lines), [ln.text() for ln in lines]
