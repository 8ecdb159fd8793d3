"""Requests counted at the server: moto's access log, written by the server's own process.

``moto_server(process=True, log=path)`` sends the server's werkzeug access log (one line
per request answered) to ``path``; a :class:`RequestLog` reads it back. Counting there,
not in the client, sees every request any client library really sent: retries, HEADs it
makes on its own, a second GET a read path did not mean to make.
"""

from __future__ import annotations

import collections
import os
import re
import time
import urllib.request
import uuid

__all__ = ["RequestLog"]

_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|DELETE|POST) (\S+)')
_MARK = "/moto-api/?swarmstore-mark="


class RequestLog:
    """The requests a moto server process answered, by ``(method, "meta" | "data")``
    ("meta": swarmstore's own ``.swarmstore/`` area), counted from its access log."""

    def __init__(self, path: str | os.PathLike[str], url: str) -> None:
        self.path, self.url = os.fspath(path), url
        self._start = 0

    def clear(self) -> None:
        """Count from here on: everything the server answered so far is left out."""
        self._start = self._settle()

    def counts(self) -> collections.Counter[tuple[str, str]]:
        """What the server answered since :meth:`clear`, once it has logged all of it."""
        end = self._settle()
        with open(self.path, "rb") as f:
            f.seek(self._start)
            text = f.read(end - self._start).decode("utf-8", "replace")
        calls: collections.Counter[tuple[str, str]] = collections.Counter()
        for line in text.splitlines():
            match = _LINE.search(line)
            if match and not match.group(2).startswith("/moto-api/"):
                method, path = match.groups()
                calls[(method, "meta" if "/.swarmstore/" in path else "data")] += 1
        return calls

    def _settle(self, timeout: float = 60.0) -> int:
        """Send a marker request and wait for its log line (the server logs each request
        after answering it, so requests answered before the marker was sent are logged by
        then); then wait until the log stops growing. The byte offset after both."""
        mark = uuid.uuid4().hex
        urllib.request.urlopen(f"{self.url}{_MARK}{mark}", timeout=10).close()
        deadline = time.monotonic() + timeout
        while mark.encode() not in self._tail():
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto never logged the marker request at {self.url}")
            time.sleep(0.02)
        size = -1
        while os.path.getsize(self.path) != size:
            size = os.path.getsize(self.path)
            time.sleep(0.05)
        return size

    def _tail(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self._start)
            return f.read()
