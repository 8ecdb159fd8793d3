"""The suite's own rules (tests/conftest.py), run on a small inner session.

A test's own ``timeout`` marker wins over the global timeout, and a process left behind
fails the session, is named with the test that left it, and is killed.
"""

from __future__ import annotations

import pathlib

import psutil
import pytest

CONFTEST = (pathlib.Path(__file__).parent / "conftest.py").read_text()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_own_timeouts_win_and_leftover_processes_fail_the_session(pytester, monkeypatch, workers):
    monkeypatch.setenv("SWARMSTORE_LEFTOVER_GRACE", "0.5")
    pytester.makeini("[pytest]\ntimeout = 1\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import subprocess, sys, time, pytest

        @pytest.mark.timeout(60)
        def test_own_timeout():
            time.sleep(1.5)

        def test_global_timeout():
            time.sleep(1.5)

        def test_leaks():
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            open("pid", "w").write(str(proc.pid))

        def test_clean():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert "test_global_timeout" in out and "Timeout" in out
    assert "processes left behind" in out
    leftovers = out.split("processes left behind", 1)[1]
    assert "test_leaks" in leftovers and "test_clean" not in leftovers
    pid = int((pytester.path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
