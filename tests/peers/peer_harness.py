"""pytest plugin shared by the peer runs: the run's plan, its outcomes, swarmstore's leftovers.

Loaded (``-p peer_harness``) into a peer's own pytest process by the peer's plugin. It writes
JSON lines to ``$PEER_REPORT``:

- ``{"kind": "plan", "nodeid", "mode", "base"}`` for every selected test: ``mode`` is
  ``"stock"`` or a swarmstore mode, ``base`` the nodeid of the stock test it is compared
  with (None for stock tests);
- ``{"kind": "report", "nodeid", "when", "outcome", "wasxfail", "summary", "duration"}``
  for every setup/call/teardown report;
- ``{"kind": "leftover", "during", "what"}`` for every unraisable exception (an exception
  in ``__del__`` or a weakref callback, a ResourceWarning at collection) that concerns a
  swarmstore object.

Leftovers are taken out of the peer's own accounting: the peer suites turn them into an
error of whichever test happens to be running when the garbage collector runs, which
says nothing about that test. They are reported on their own instead (see
``peer_runner.leftovers``), so a leak is one named failure, not noise across the run.
Anything else unraisable goes to pytest as usual. At the end of the session the harness
waits (bounded) for swarmstore's background threads to finish and collects garbage, so
what a run leaves behind is seen in the same run.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
import warnings
import zlib
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

MODE = pytest.StashKey[str]()
BASE = pytest.StashKey[str | None]()

#: Text that marks an unraisable as swarmstore's: its objects, its threads, the disk
#: tier's SQLite index (the peers' stock stores never open SQLite)
_OURS = ("swarmstore", "sqlite3.Connection")
_THREAD_PREFIX = "swarmstore-"
_DRAIN_S = 10.0


class _Report:
    """The JSON-lines file of this run, and what the harness saw while tests ran."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # lives as long as the run
        self._lock = threading.Lock()
        self.current: str | None = None
        self._previous: Callable[[Any], object] | None = None

    def write(self, **record: Any) -> None:
        with self._lock:
            self._file.write(json.dumps(record, default=str) + "\n")

    # -- unraisables ----------------------------------------------------------------------
    def install(self) -> None:
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._hook

    def uninstall(self) -> None:
        if self._previous is not None and sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous

    def _hook(self, unraisable: Any) -> None:
        text = "".join(
            traceback.format_exception(
                unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
            )
        )
        what = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n{text}"
        if any(mark in what for mark in _OURS):
            thread = threading.current_thread().name
            self.write(kind="leftover", during=self.current, thread=thread, what=what)
        elif self._previous is not None:
            self._previous(unraisable)  # pytest's own handling: the peer decides

    def close(self) -> None:
        self._file.close()


_report: _Report | None = None


def _drain() -> None:
    """Wait (bounded) for swarmstore's background threads, then collect garbage."""
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline:
        if not any(t.name.startswith(_THREAD_PREFIX) for t in threading.enumerate()):
            break
        time.sleep(0.05)
    for _ in range(3):
        gc.collect()


@pytest.hookimpl(trylast=True)  # after pytest's own unraisable hook is in place
def pytest_configure(config: pytest.Config) -> None:
    global _report
    path = os.environ.get("PEER_REPORT")
    if path and _report is None:
        _report = _Report(path)
        _report.install()


@pytest.hookimpl(tryfirst=True)  # before pytest's last collection of unraisables
def pytest_unconfigure(config: pytest.Config) -> None:
    global _report
    if _report is not None:
        _report.current = "<session end>"
        _drain()
        _report.uninstall()
        _report.close()
        _report = None


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    if _report is None:
        return
    for item in session.items:
        mode = item.stash.get(MODE, "stock")
        _report.write(kind="plan", nodeid=item.nodeid, mode=mode, base=item.stash.get(BASE, None))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if _report is not None:
        _report.current = item.nodeid
    return (yield)


def _summary(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(getattr(longrepr, "reprcrash", None), "message", None)
    text = str(longrepr) if longrepr is not None else ""
    tail = "\n".join(text.splitlines()[-25:])
    return f"{crash}\n---\n{tail}" if crash else tail


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _report is None:
        return
    _report.write(
        kind="report",
        nodeid=report.nodeid,
        when=report.when,
        outcome=report.outcome,
        wasxfail=getattr(report, "wasxfail", None),
        summary=_summary(report),
        duration=round(report.duration, 4),
    )


def pytest_warning_recorded(
    warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any
) -> None:
    """A ResourceWarning about a swarmstore object (where the peer does not make warnings
    errors, they never become unraisables) is a leftover too."""
    if _report is None or not issubclass(warning_message.category, ResourceWarning):
        return
    what = f"{warning_message.category.__name__}: {warning_message.message}"
    if any(mark in what for mark in _OURS):
        _report.write(kind="leftover", during=nodeid or _report.current, thread="", what=what)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _report is not None and report.failed:
        _report.write(kind="collect-error", nodeid=report.nodeid, summary=str(report.longrepr))


def spread(combos: list[Any], per: int) -> list[Any]:
    """``per`` of ``combos`` spread evenly (the first and the last among them); all if
    per <= 0 or there are no more than that."""
    if per <= 0 or len(combos) <= per:
        return list(combos)
    if per == 1:
        return [combos[0]]
    step = (len(combos) - 1) / (per - 1)
    return [combos[round(i * step)] for i in range(per)]


def sampling() -> tuple[int, int]:
    """(``PEER_SAMPLE``: parameter combinations kept per test function, ``PEER_MODES``:
    swarmstore modes each kept combination runs over); 0 or unset: all."""
    return int(os.environ.get("PEER_SAMPLE") or 0), int(os.environ.get("PEER_MODES") or 0)


def rotation(name: str, choices: list[str], k: int) -> list[str]:
    """``k`` of ``choices`` for ``name``, stable across runs and machines, so that
    consecutive names get different ones and every choice gets its share; all if k <= 0."""
    if k <= 0 or k >= len(choices):
        return list(choices)
    start = zlib.crc32(name.encode()) % len(choices)
    return [choices[(start + i) % len(choices)] for i in range(k)]


def mark_known(item: pytest.Item, known: dict[str, str]) -> None:
    """Mark ``item`` xfail(strict) when ``known`` (nodeid -> reason) names it."""
    reason = known.get(item.nodeid)
    if reason is not None:
        item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
