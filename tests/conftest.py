"""Suite-wide rules: a test's own timeout wins, and no test leaves a process behind.

- Timeouts: pytest-timeout gives ``@pytest.mark.timeout(N)`` precedence over the global
  ``timeout = 120`` of pyproject.toml (and over ``--timeout``); ``tests/test_suite.py``
  checks that it stays so. A test that waits on a subprocess passes the same bound to the
  subprocess and to the marker.
- Processes: after each test the suite notes the child processes it left; at the end of
  the session every child still alive after a grace period (moto servers, dask workers,
  kernels, proxies) is named with the test that left it, killed, and the session fails.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

# before anything imports distributed.utils_test: it snapshots dask.config at import and every
# gen_cluster resets to that snapshot, which would drop swarmstore's registered defaults
import swarmstore.config  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest_plugins = ["swarmstore.testing.fixtures", "pytester"]

#: children that belong to the interpreter, not to a test (multiprocessing's helpers)
_BENIGN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
#: seconds a leftover child gets to exit on its own at session end
_GRACE = float(os.environ.get("SWARMSTORE_LEFTOVER_GRACE", "10"))

_first_seen: dict[int, str] = {}  # pid -> the test after which it was first alive


def _children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(b in " ".join(child.cmdline()) for b in _BENIGN):
                continue
        except psutil.Error:
            continue
        out.append(child)
    return out


@pytest.fixture(scope="session", autouse=True)
def _io_loop_started_before_any_test() -> None:
    """zarr's I/O loop (where swarmstore's store coroutines run, ``swarmstore._sync``) and
    its default executor live as long as the process. Started here, every executor thread
    included, so distributed's per-test thread-leak check (``gen_cluster``) never counts
    them against whichever test happens to use them first."""
    import asyncio
    import threading

    from swarmstore import _sync

    workers = min(32, (os.cpu_count() or 1) + 4)  # the default executor's size
    barrier = threading.Barrier(workers + 1)

    async def occupy() -> Any:
        loop = asyncio.get_running_loop()
        return asyncio.gather(
            *(loop.run_in_executor(None, barrier.wait, 60) for _ in range(workers))
        )

    async def finish(waits: Any) -> None:
        await waits

    waits = _sync.run(occupy())
    barrier.wait(60)  # every executor thread exists now, blocked here; all go on together
    _sync.run(finish(waits))


@pytest.fixture(autouse=True)
def _note_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for child in _children():
        _first_seen.setdefault(child.pid, request.node.nodeid)


@pytest.fixture(autouse=True)
def _swarmstore_config_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves ``swarmstore.*`` config changed fails: the change would reach
    every later test in its process (a CLI ``--config`` with ``keep-last: 1`` once made
    checkpoint tests in other modules lose old steps, only in full runs)."""
    import copy

    import dask.config

    before = copy.deepcopy(dask.config.get("swarmstore"))
    yield
    after = dask.config.get("swarmstore")
    if after != before:
        dask.config.config["swarmstore"] = before  # later tests start clean either way
        pytest.fail(f"{request.node.nodeid} left swarmstore config changed", pytrace=False)


@pytest.fixture(autouse=True)
def _sigint_handler_kept(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves Python's SIGINT handler replaced would make Ctrl-C (and the
    Ctrl-C tests after it in its process) do nothing: restore it, and say who did it."""
    import signal

    yield
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        note = os.environ.get("SWARMSTORE_SIGINT_LOG")
        if note:
            with open(note, "a") as f:
                f.write(f"{request.node.nodeid}: {handler!r}\n")


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())[:160]
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid} ({cmd}) left by {_first_seen.get(proc.pid, 'session fixtures')}"


def leftover_processes(grace: float = _GRACE) -> list[psutil.Process]:
    """Children still alive after ``grace`` seconds (polled, so a quick exit is not waited)."""
    deadline = time.monotonic() + grace
    while True:
        alive = _children()
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


#: under pytest-xdist each worker checks its own children (an orphan of an exited worker is
#: invisible to the controller) and leaves its findings here for the controller to report
_LEFTOVER_DIR = "SWARMSTORE_LEFTOVER_DIR"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        import tempfile

        where = tempfile.mkdtemp(prefix="swarmstore-leftovers-")
        config._swarmstore_leftover_dir = where  # type: ignore[attr-defined]
        os.environ[_LEFTOVER_DIR] = where  # workers start after this and inherit it


def _reap() -> list[str]:
    """Children still alive after the grace time, killed; one line each."""
    alive = leftover_processes()
    lines = [_describe(p) for p in alive]
    for proc in alive:  # leave nothing behind on the machine either
        try:
            proc.kill()
        except psutil.Error:
            pass
    return lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    if getattr(session.config.option, "collectonly", False):
        return
    lines = _reap()
    if hasattr(session.config, "workerinput"):  # an xdist worker: tell the controller
        where = os.environ.get(_LEFTOVER_DIR)
        if lines and where:
            name = f"{session.config.workerinput['workerid']}.txt"
            pathlib.Path(where, name).write_text("\n".join(lines))
        return
    where = getattr(session.config, "_swarmstore_leftover_dir", None)
    if where and os.path.isdir(where):
        for found in sorted(pathlib.Path(where).glob("*.txt")):
            lines += found.read_text().splitlines()
        shutil.rmtree(where, ignore_errors=True)
    if lines:
        session.config._swarmstore_leftovers = lines  # type: ignore[attr-defined]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: Any, config: pytest.Config) -> None:
    lines = getattr(config, "_swarmstore_leftovers", None)
    if lines:
        terminalreporter.section("processes left behind (killed; the session fails)", red=True)
        for line in lines:
            terminalreporter.line(line)
