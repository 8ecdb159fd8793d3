"""Helpers for the test bed's own tests: a threaded TCP echo server and a deadline poll.

(A uniquely named module rather than conftest.py, so imports never meet another room's conftest.)
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.server.received += len(data)  # type: ignore[attr-defined]
            try:
                self.request.sendall(data)
            except OSError:
                return


class EchoServer(socketserver.ThreadingTCPServer):
    """Echo every byte back on the same connection; counts connections and bytes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.accepted = 0
        self.received = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.server_address[:2]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


def poll(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` s (a deadline, not a bound)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.01)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
