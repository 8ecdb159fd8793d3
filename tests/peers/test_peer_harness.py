"""The peers harness itself: fetching, reading a run back, comparing with stock, sampling."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import fetch_sources
import peer_harness
import peer_runner
import pytest


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extract_takes_only_the_members_a_peer_needs(tmp_path: pathlib.Path) -> None:
    archive = _tarball(
        {
            "zarr-9.9/pyproject.toml": b"[tool.pytest.ini_options]\n",
            "zarr-9.9/tests/test_x.py": b"def test_x(): pass\n",
            "zarr-9.9/tests/sub/conftest.py": b"",
            "zarr-9.9/src/zarr/__init__.py": b"raise SystemExit",  # library code: never
            "zarr-9.9/testsuite/test_y.py": b"",  # a prefix of "tests/" is no member
            "zarr-9.9/tests/../evil.py": b"",
        }
    )
    n = fetch_sources._extract(archive, ("pyproject.toml", "tests/"), tmp_path)
    got = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert got == ["pyproject.toml", "tests/sub/conftest.py", "tests/test_x.py"]
    assert n == 3


def _run(records: list[dict]) -> peer_runner.Run:
    lines = [json.dumps(r) for r in records]
    return peer_runner.Run.parse(lines, peer="p", returncode=1, seconds=0, output="", source={})


def _plan(nodeid: str, mode: str = "stock", base: str | None = None) -> dict:
    return {"kind": "plan", "nodeid": nodeid, "mode": mode, "base": base}


def _rep(nodeid: str, when: str, outcome: str, wasxfail: str | None = None) -> dict:
    return {
        "kind": "report",
        "nodeid": nodeid,
        "when": when,
        "outcome": outcome,
        "wasxfail": wasxfail,
        "summary": f"{when} {outcome}",
        "duration": 0.01,
    }


def _phases(nodeid: str, setup: str, call: str | None, teardown: str) -> list[dict]:
    reps = [_rep(nodeid, "setup", setup)]
    if call is not None:
        reps.append(_rep(nodeid, "call", call))
    return [*reps, _rep(nodeid, "teardown", teardown)]


def test_outcomes_read_back_from_phase_reports() -> None:
    run = _run(
        [
            *_phases("ok", "passed", "passed", "passed"),
            *_phases("fails", "passed", "failed", "passed"),
            *_phases("teardown-error", "passed", "passed", "failed"),
            *_phases("skipped", "skipped", None, "passed"),
            _rep("xfailed", "setup", "passed"),
            _rep("xfailed", "call", "skipped", wasxfail="issue 23: x"),
            _rep("xfailed", "teardown", "passed"),
            _plan("never"),
        ]
    )
    outcomes = {k: t.outcome for k, t in run.tests.items()}
    assert outcomes == {
        "ok": "passed",
        "fails": "failed",
        "teardown-error": "error",
        "skipped": "skipped",
        "xfailed": "xfailed",
        "never": "not run",
    }
    assert run.tests["teardown-error"].summary.startswith("[teardown]")
    assert "never ran" in (run.broken() or "")


def test_beyond_stock_counts_only_failures_stock_does_not_share() -> None:
    records = [_plan("t[memory]"), _plan("u[memory]"), _plan("v[memory]")]
    records += [_plan(f"{n}[ss]", "ss", f"{n}[memory]") for n in "tuv"]
    records += _phases("t[memory]", "passed", "passed", "passed")
    records += _phases("t[ss]", "passed", "failed", "passed")  # ours only: a finding
    records += _phases("u[memory]", "passed", "failed", "passed")
    records += _phases("u[ss]", "passed", "failed", "passed")  # stock fails too: not ours
    records += _phases("v[memory]", "skipped", None, "passed")
    records += _phases("v[ss]", "passed", "passed", "failed")  # an error where stock skips
    found = _run(records).beyond_stock("ss")
    assert [(f.nodeid, f.base_outcome, f.outcome) for f in found] == [
        ("t[ss]", "passed", "failed"),
        ("v[ss]", "skipped", "error"),
    ]


def test_strict_xpass_is_a_failure_that_names_the_known_entry() -> None:
    """A known failure fixed by its room fails the run (pytest reports XPASS(strict) as
    a failed call), so the entry in peer_known gets deleted."""
    run = _run(
        [
            _plan("k[memory]"),
            _plan("k[ss]", "ss", "k[memory]"),
            *_phases("k[memory]", "passed", "passed", "passed"),
            *_phases("k[ss]", "passed", "failed", "passed"),
        ]
    )
    assert [f.nodeid for f in run.beyond_stock("ss")] == ["k[ss]"]


def test_spread_and_rotation_cover_every_choice() -> None:
    assert peer_harness.spread(list(range(10)), 3) == [0, 4, 9]
    assert peer_harness.spread([1, 2], 5) == [1, 2]
    assert peer_harness.spread([1, 2, 3], 0) == [1, 2, 3]
    modes = ["a", "b", "c", "d", "e", "f"]
    picks = [peer_harness.rotation(f"test_{i}", modes, 2) for i in range(60)]
    assert all(len(set(p)) == 2 for p in picks)
    assert {m for p in picks for m in p} == set(modes)  # every mode gets tests
    assert peer_harness.rotation("x", modes, 2) == peer_harness.rotation("x", modes, 2)
    assert peer_harness.rotation("x", modes, 0) == modes


@pytest.mark.parametrize("peer", sorted(fetch_sources.PEERS))
def test_fetched_sources_are_the_installed_versions(peer: str) -> None:
    """What tests/peers runs is the installed version's tests, and says where it came from."""
    where = peer_runner.source_dir(peer)
    if where is None:
        pytest.skip(f"{peer}'s tests are not fetched (run `make peer-tests`)")
    source = json.loads((where / "SOURCE.json").read_text())
    assert source["version"] == fetch_sources.PEERS[peer].version
    assert any(where.rglob("test_*.py"))
    assert not (where / peer / "__init__.py").exists()  # tests only: the library is the venv's
