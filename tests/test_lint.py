"""Lint is part of the suite: ``ruff check`` and ``ruff format --check``, as ``make lint``.

Files a room has still to clean are listed with the room; the list is strict both ways: a
new unclean file fails, and so does a listed file that became clean (drop it from the list).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent
PATHS = ["swarmstore", "plugins", "tests", "benchmarks", "examples"]

#: file -> the room that owns it, for files not clean yet (the lead shrinks this as rooms land)
NOT_YET_FORMATTED: dict[str, str] = {}
NOT_YET_CHECKED: dict[str, str] = {
    "tests/storage/test_faults.py": "storage",
}


def _ruff(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout + proc.stderr


def test_ruff_check_is_clean():
    out = _ruff("check", "--output-format", "concise", "--no-cache")
    bad = {line.split(":", 1)[0] for line in out.splitlines() if re.match(r"^\S+\.py:\d+", line)}
    assert bad - set(NOT_YET_CHECKED) == set(), out
    assert set(NOT_YET_CHECKED) - bad == set(), "clean now: drop from NOT_YET_CHECKED"


def test_ruff_format_is_clean():
    out = _ruff("format", "--check", "--no-cache", "--output-format", "concise")
    bad = set(re.findall(r"^(\S+\.py):\d+:\d+: unformatted", out, re.M))
    assert bad - set(NOT_YET_FORMATTED) == set(), out
    assert set(NOT_YET_FORMATTED) - bad == set(), "clean now: drop from NOT_YET_FORMATTED"
