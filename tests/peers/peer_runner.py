"""Run a peer's own test suite in its own pytest process and compare swarmstore with stock.

The peer runs from its fetched sources (``.peer-tests/<name>-<version>``) with its own
pytest configuration (its ``pyproject.toml``: its warning filters, its markers, its
asyncio mode), plus our plugins on ``PYTHONPATH``. Its addopts are replaced: they name
plugins the peers use for coverage and benchmarks, not for correctness.

:class:`Run` reads back the JSON lines of ``peer_harness`` and answers the question the
harness exists for: which tests fail with a swarmstore store (or plugin) and not with
the stock one in the same run.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".peer-tests"

_FAILED = ("failed", "error")


def source_dir(peer: str) -> pathlib.Path | None:
    """The fetched tests of ``peer`` at the installed version, or None if not fetched."""
    import importlib.metadata

    path = CACHE / f"{peer}-{importlib.metadata.version(peer)}"
    return path if (path / "SOURCE.json").exists() else None


@dataclass
class Outcome:
    """One test of the run: what it was (mode, its stock reference) and how it ended."""

    nodeid: str
    mode: str = "stock"
    base: str | None = None
    outcome: str = "not run"  # passed, failed, error, skipped, xfailed, xpassed, not run
    summary: str = ""
    duration: float = 0.0

    def record(self, report: dict) -> None:
        self.duration += report["duration"]
        out, when, xfail = report["outcome"], report["when"], report["wasxfail"]
        if out == "failed":
            if self.outcome not in _FAILED:
                self.outcome = "failed" if when == "call" else "error"
                self.summary = f"[{when}] {report['summary']}"
        elif self.outcome in _FAILED:
            return
        elif out == "skipped":
            self.outcome = "xfailed" if xfail is not None else "skipped"
            self.summary = xfail if xfail is not None else report["summary"]
        elif when == "call":
            self.outcome = "xpassed" if xfail is not None else "passed"
        elif when == "setup" and self.outcome == "not run":
            self.outcome = "passed"


@dataclass
class Finding:
    """A test that fails with swarmstore and not with the stock store it stands in for."""

    nodeid: str
    mode: str
    base: str
    base_outcome: str
    outcome: str
    summary: str

    def __str__(self) -> str:
        first = "\n    ".join(self.summary.strip().splitlines()[:12])
        return (
            f"{self.nodeid}: {self.outcome} with {self.mode} "
            f"(stock {self.base}: {self.base_outcome})\n    {first}"
        )


@dataclass
class Run:
    """A finished peer run: every test's outcome, the leftovers, the process's output."""

    peer: str
    returncode: int
    seconds: float
    output: str
    source: dict
    tests: dict[str, Outcome] = field(default_factory=dict)
    leftovers: list[dict] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: list[str], **kw: object) -> Run:
        run = cls(**kw)  # type: ignore[arg-type]
        for line in lines:
            rec = json.loads(line)
            kind = rec.pop("kind")
            if kind == "plan":
                run.tests[rec["nodeid"]] = Outcome(rec["nodeid"], rec["mode"], rec["base"])
            elif kind == "report":
                run.tests.setdefault(rec["nodeid"], Outcome(rec["nodeid"])).record(rec)
            elif kind == "leftover":
                run.leftovers.append(rec)
            elif kind == "collect-error":
                run.collect_errors.append(rec)
        return run

    def of(self, mode: str) -> list[Outcome]:
        return [t for t in self.tests.values() if t.mode == mode]

    def counts(self, mode: str) -> Counter[str]:
        return Counter(t.outcome for t in self.of(mode))

    def beyond_stock(self, mode: str) -> list[Finding]:
        """Tests of ``mode`` that failed (or errored) while their stock reference did not."""
        found = []
        for t in self.of(mode):
            ref = self.tests.get(t.base or "")
            ref_outcome = ref.outcome if ref is not None else "missing"
            if t.outcome in _FAILED and ref_outcome not in _FAILED:
                base = t.base or ""
                found.append(Finding(t.nodeid, mode, base, ref_outcome, t.outcome, t.summary))
        return found

    def broken(self) -> str | None:
        """Why the run itself says nothing (no tests, a crash, collection errors), or None."""
        if self.collect_errors:
            errs = "\n".join(f"{e['nodeid']}: {e['summary'][-2000:]}" for e in self.collect_errors)
            return f"collection errors:\n{errs}"
        if not self.tests:
            return f"no tests ran (exit {self.returncode}):\n{self.output[-4000:]}"
        if self.returncode not in (0, 1):
            return f"pytest exited {self.returncode}:\n{self.output[-4000:]}"
        if any(t.outcome == "not run" for t in self.tests.values()):
            missing = [t.nodeid for t in self.tests.values() if t.outcome == "not run"]
            tail = self.output[-4000:]
            return f"{len(missing)} planned tests never ran, e.g. {missing[:5]}:\n{tail}"
        return None

    def table(self) -> str:
        """Counts of outcomes per mode, for the log and the docs."""
        modes = sorted({t.mode for t in self.tests.values()}, key=lambda m: (m != "stock", m))
        rows = [f"{self.peer} {self.source.get('version')} ({self.seconds:.0f} s)"]
        for m in modes:
            c = self.counts(m)
            rows.append(f"  {m:24} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        return "\n".join(rows)


def describe_leftovers(run: Run, limit: int = 8) -> str:
    """The leftovers of ``run``: how many, of what kind, and the first few in full."""
    kinds = Counter(rec["what"].splitlines()[-1].split(" at 0x")[0] for rec in run.leftovers)
    lines = [f"{len(run.leftovers)} unraisables about swarmstore objects in the {run.peer} run:"]
    lines += [f"  {n} x {kind}" for kind, n in kinds.most_common()]
    for rec in run.leftovers[:limit]:
        lines.append(f"- during {rec['during']} (thread {rec['thread']}):")
        lines += ["    " + x for x in rec["what"].strip().splitlines()[-6:]]
    return "\n".join(lines)


def confirm(
    first: Run,
    findings: list[Finding],
    plugins: list[str],
    *,
    tries: int = 2,
    addopts: str = "",
    env: dict[str, str] | None = None,
) -> tuple[list[Finding], list[Finding]]:
    """Re-run each finding with its stock twin, alone, up to ``tries`` times: (those that
    failed again every time, those that did not). The second are load flakes of a busy
    machine; both lists are reported, only the first fails the suite."""
    confirmed, flaky = list(findings), []
    for _ in range(tries):
        if not confirmed:
            break
        ids = sorted({f.nodeid for f in confirmed} | {f.base for f in confirmed})
        again = run(
            first.peer, ids, plugins, addopts=addopts, env={**(env or {}), "PEER_SAMPLE": "0"}
        )
        repeat: set[str] = set()
        for mode in {f.mode for f in confirmed}:
            repeat |= {f.nodeid for f in again.beyond_stock(mode)}
        flaky += [f for f in confirmed if f.nodeid not in repeat]
        confirmed = [f for f in confirmed if f.nodeid in repeat]
    return confirmed, flaky


def run(
    peer: str,
    args: list[str],
    plugins: list[str],
    *,
    addopts: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 1200,
) -> Run:
    """Run ``pytest args`` in ``peer``'s fetched sources with ``plugins``; parse its report.

    ``addopts`` replaces the peer's own (keep there what its tests need, such as
    distributed's ``-p no:asyncio``)."""
    where = source_dir(peer)
    if where is None:
        raise FileNotFoundError(f"{peer}'s tests are not fetched: run `make peer-tests`")
    with tempfile.TemporaryDirectory(prefix=f"peer-{peer}-") as tmp:
        report = pathlib.Path(tmp) / "report.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-c", str(where / "pyproject.toml")]
        cmd += ["--rootdir", str(where), "-o", f"addopts={addopts}", "-q", "-p", "no:cacheprovider"]
        cmd += ["--basetemp", str(pathlib.Path(tmp) / "basetemp"), "-p", "peer_harness"]
        for p in plugins:
            cmd += ["-p", p]
        full_env = {**os.environ, **(env or {}), "PEER_REPORT": str(report)}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        )
        full_env.pop("PYTEST_ADDOPTS", None)
        full_env.pop("PYTEST_CURRENT_TEST", None)
        start = time.monotonic()
        proc = subprocess.run(
            [*cmd, *args],
            cwd=where,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        seconds = time.monotonic() - start
        lines = report.read_text().splitlines() if report.exists() else []
    source = json.loads((where / "SOURCE.json").read_text())
    output = proc.stdout + proc.stderr
    return Run.parse(
        lines, peer=peer, returncode=proc.returncode, seconds=seconds, output=output, source=source
    )
