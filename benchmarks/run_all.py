"""Run every benchmark (``benchmarks/bench_*.py``) and print their ratio lines.

Usage: ``python benchmarks/run_all.py [--quick] [names...]``. Each script prints one line
per measure, ``<measure>: <ratio>x (goal ...)``, both sides measured in the same run.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    failed = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
        rc = subprocess.call(cmd)
        print(f"   ({time.perf_counter() - t0:.1f} s, exit {rc})", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
