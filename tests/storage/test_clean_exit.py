"""Clean exit (issue 16): a process that read S3 through s3fs, obstore and swarmstore nodes
over each closes every HTTP session; aiohttp's "Unclosed client session" never shows."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_obstore_benchmark_exits_without_unclosed_sessions(tmp_path):
    """It printed the message once (s3fs's session closer misses aiobotocore 3's sessions):
    run it in its smallest mode, in its own process with its own moto server."""
    env = {
        **os.environ,
        "SWARMSTORE_BENCH_RESULTS": str(tmp_path / "bench.jsonl"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_obstore.py"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reads/s, swarmstore R=1 over an obstore node" in done.stdout  # it really ran
    for text in (done.stdout, done.stderr):
        assert "Unclosed client session" not in text, text[-3000:]
        assert "Unclosed connector" not in text, text[-3000:]
