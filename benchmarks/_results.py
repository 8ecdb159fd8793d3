"""One benchmark line: swarmstore against a named peer, same work, same run.

Every ``bench_*.py`` reports through :func:`emit`, which prints the line with its goal and
PASS or MISS and appends it (JSON, one object per line) to the results file that
``benchmarks/tables.py`` turns into the README's tables. A line whose goal cannot be missed
is a defect: each goal compares a measured ratio, never a constant.

Usage from a benchmark script (run as ``python benchmarks/bench_x.py``)::

    from _results import Line, emit

    emit(Line("storage", "verified read, R=3 over 3 local dirs", ours=t_ours, peer=t_plain,
              peer_name="zarr LocalStore", unit="s", better="lower", goal=1.10))
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["RESULTS", "Line", "emit", "load"]

HERE = pathlib.Path(__file__).parent
#: where lines go; ``make bench`` starts it afresh, a single script appends
RESULTS = pathlib.Path(
    os.environ.get("SWARMSTORE_BENCH_RESULTS", HERE / "results" / "latest.jsonl")
)


@dataclass
class Line:
    """A measure of swarmstore (``ours``) against ``peer`` on the same work.

    ``ratio`` is ``ours / peer``. With ``better="lower"`` (times, bytes) the goal holds when
    the ratio is at most ``goal``; with ``better="higher"`` (throughput, hit rate) when it is
    at least ``goal``. ``goal=None`` marks a line that is context only (printed, no verdict).
    """

    bench: str
    measure: str
    ours: float
    peer: float
    peer_name: str
    unit: str
    better: Literal["lower", "higher"]
    goal: float | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.peer == 0:
            return math.inf if self.ours else 1.0
        return self.ours / self.peer

    @property
    def passed(self) -> bool | None:
        if self.goal is None:
            return None
        if self.better == "lower":
            return self.ratio <= self.goal
        return self.ratio >= self.goal

    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "info"}[self.passed]

    def text(self) -> str:
        op = "<=" if self.better == "lower" else ">="
        goal = f"goal {op} {self.goal:g}" if self.goal is not None else "no goal"
        return (
            f"{self.measure}: {self.ratio:.3g}x vs {self.peer_name} "
            f"({self.ours:.4g} vs {self.peer:.4g} {self.unit}; {goal}) {self.verdict()}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}


def emit(line: Line) -> Line:
    """Print ``line`` and append it to :data:`RESULTS`; returns it (for the script's exit code)."""
    if line.better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {line.better!r}")
    print(f"  {line.text()}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {**line.as_dict(), "time": time.time(), "machine": platform.node()}
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return line


def load(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The lines of a results file, the newest line of each (bench, measure) kept."""
    p = pathlib.Path(path) if path is not None else RESULTS
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in p.read_text().splitlines():
        if raw.strip():
            rec = json.loads(raw)
            latest[(rec["bench"], rec["measure"])] = rec
    return list(latest.values())
