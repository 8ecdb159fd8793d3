"""Run every benchmark (``benchmarks/bench_*.py``) and collect their lines in one results file.

Usage: ``python benchmarks/run_all.py [--quick] [names...]``. A run of every benchmark
starts the results file afresh (``benchmarks/results/latest.jsonl``, or
``$SWARMSTORE_BENCH_RESULTS``) and writes ``latest.meta.json`` beside it (quick or full,
when, where); a run of some names appends to it. Each script prints one line per measure
with both sides, the ratio, its goal and PASS/MISS (``_results.emit``). At the end the
summary counts PASS and MISS; ``python benchmarks/tables.py`` then regenerates the README's
and docs' tables from the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from _results import RESULTS, load  # noqa: E402


def meta_path(results: pathlib.Path = RESULTS) -> pathlib.Path:
    return results.with_name(results.stem + ".meta.json")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not names:
        RESULTS.unlink(missing_ok=True)
        meta = {
            "mode": "quick" if quick else "full",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        meta_path().write_text(json.dumps(meta, indent=2) + "\n")
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
        rc = subprocess.call(cmd)
        print(f"   ({time.perf_counter() - t0:.1f} s, exit {rc})", flush=True)
        if rc != 0:
            failed.append(script.stem)
    lines = load() if RESULTS.exists() else []
    passed = sum(r["passed"] is True for r in lines)
    missed = [r for r in lines if r["passed"] is False]
    print(f"== {len(lines)} lines in {RESULTS}: {passed} PASS, {len(missed)} MISS")
    for r in missed:
        print(f"   MISS {r['bench']}: {r['measure']} ({r['ratio']:.3g}x, goal {r['goal']:g})")
    if failed:
        print(f"== scripts that failed: {', '.join(failed)}")
    print("== regenerate the tables: python benchmarks/tables.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
