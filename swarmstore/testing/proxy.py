"""A real TCP proxy on 127.0.0.1 whose link can be impaired while a test runs.

``tc netem`` is missing on the kernels we run on (DESIGN.md fact 18), so delay, loss and
freezes come from userspace: a :class:`Proxy` accepts connections on 127.0.0.1, opens one
upstream connection for each, and forwards the bytes in both directions through an
:class:`Impairment` per direction:

- ``latency`` + ``jitter``: every segment (one read of up to 64 KiB) is held until
  ``arrival + latency + uniform(0, jitter)``, never before the segment ahead of it (a TCP
  stream is never reordered);
- ``bandwidth``: bytes/s of the whole link in that direction, shared by all its
  connections (each piece of at most 16 KiB waits for the link to be free);
- ``loss``: the probability that a segment is lost. TCP never loses bytes from the
  application's view: a lost segment is retransmitted after a retransmission timeout, so
  it is modelled as a *stall* of ``rto`` seconds, bytes intact (counted in ``stalls``);
- ``resets``: the probability per segment that the connection is reset (RST) instead.

And for the whole proxy:

- :meth:`Proxy.freeze`: connections are still accepted and bytes still read and held,
  but nothing is forwarded and nothing answers until :meth:`Proxy.thaw` -- a SIGSTOPped
  server, without stopping a process;
- :meth:`Proxy.kill`: every open connection is reset (RST) and every new one is accepted
  and reset at once (counted in ``refused``) until :meth:`Proxy.revive` -- a dead node.
  The listener stays open so attempts can be counted; a client sees
  ``ConnectionResetError`` (or its library's wrapper of it).

Counters (:class:`Counters`) tell a test what went through: connections, bytes each way,
stalls, resets, refused attempts.

All proxies given the same :class:`ProxyLoop` share one event loop thread; a proxy built
without one runs its own. Settings are plain attributes read for every segment, so a test
thread changes them live (``proxy.down.latency = 0.05``, or :meth:`Proxy.set`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import time
from typing import Any, Literal

from swarmstore.testing._link import Counters, Impairment, ProxyLoop

__all__ = ["Counters", "Impairment", "Proxy", "ProxyLoop"]

_READ = 64 * 1024
_PIECE = 16 * 1024
_EOF = b""


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Reset(Exception):
    """This segment resets the connection."""


class _Conn:
    """One proxied connection: the client side and the upstream side."""

    __slots__ = ("client", "tasks", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _rst(self.client)
        _rst(self.upstream)


class Proxy:
    """Forward TCP connections from ``127.0.0.1:<port>`` to ``upstream`` through impairments.

    Parameters
    ----------
    upstream : (host, port) or "http://host:port"
        Where each accepted connection is forwarded.
    loop : ProxyLoop, optional
        Share this loop thread; without it the proxy runs (and closes) its own.
    name : str, optional
        A label for reprs and test reports.
    seed : int, optional
        Seed of the random choices (jitter, loss, resets), for repeatable tests.

    Notes
    -----
    Settings may be changed from any thread while traffic flows; each segment reads them
    when it arrives (latency, jitter) or leaves (bandwidth, loss, resets, freeze).

    Examples
    --------
    >>> import socket
    >>> server = socket.create_server(("127.0.0.1", 0))
    >>> with Proxy(server.getsockname()) as p:
    ...     p.set(latency=0.01)
    ...     c = socket.create_connection(p.address)
    ...     peer, _ = server.accept()
    ...     c.sendall(b"ping"); peer.recv(4)
    ...     c.close(); peer.close()
    b'ping'
    >>> server.close()
    """

    def __init__(
        self,
        upstream: tuple[str, int] | str,
        *,
        loop: ProxyLoop | None = None,
        name: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.upstream = _parse(upstream)
        self.name = name or f"proxy->{self.upstream[0]}:{self.upstream[1]}"
        self.up = Impairment()  #: client -> upstream
        self.down = Impairment()  #: upstream -> client
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._own_loop = loop is None
        self._loop = loop or ProxyLoop(name=f"swarmstore-{self.name}")
        self._conns: set[_Conn] = set()
        self._link_free = {"up": 0.0, "down": 0.0}  # monotonic time each direction frees up
        self._frozen = False
        self._dead = False
        self._closed = False
        self._thawed: asyncio.Event
        self._server: asyncio.Server
        try:
            self._loop.call(self._start())
        except BaseException:
            if self._own_loop:
                self._loop.close()
            raise

    async def _start(self) -> None:
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]

    def __repr__(self) -> str:
        state = "killed" if self._dead else "frozen" if self._frozen else "open"
        return f"Proxy({self.name!r}, {self.url} -> {self.upstream}, {state})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the address clients use instead of the upstream's."""
        return f"http://{self.address[0]}:{self.address[1]}"

    # --- impairments, from any thread ---------------------------------------------------------
    def set(self, direction: Literal["both", "up", "down"] = "both", **settings: Any) -> None:
        """Change impairments of one direction or both, e.g. ``set(latency=0.02)``."""
        targets = {"both": (self.up, self.down), "up": (self.up,), "down": (self.down,)}
        if direction not in targets:
            raise ValueError(f"direction must be 'both', 'up' or 'down', not {direction!r}")
        known = {f.name for f in dataclasses.fields(Impairment)}
        if unknown := set(settings) - known:
            raise ValueError(f"unknown impairments {sorted(unknown)}; known: {sorted(known)}")
        for imp in targets[direction]:
            trial = dataclasses.replace(imp, **settings)
            trial.check()
            for k, v in settings.items():
                setattr(imp, k, v)

    def clear(self) -> None:
        """Remove every impairment, thaw and revive: a healthy link again."""
        self.up, self.down = Impairment(), Impairment()
        self.thaw()
        self.revive()

    def freeze(self) -> None:
        """Hold every byte from now on, in both directions, accepting new connections too."""
        self._frozen = True
        self._loop.loop.call_soon_threadsafe(self._thawed.clear)

    def thaw(self) -> None:
        """Forward what was held, and everything after it."""
        self._frozen = False
        if not self._loop.loop.is_closed():
            self._loop.loop.call_soon_threadsafe(self._thawed.set)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def kill(self) -> None:
        """Reset every open connection and every new one until :meth:`revive` (a dead node)."""
        self._dead = True
        self._loop.call(self._reset_all())

    def revive(self) -> None:
        """Forward new connections again after :meth:`kill`."""
        self._dead = False

    @property
    def killed(self) -> bool:
        return self._dead

    async def _reset_all(self) -> None:
        for conn in list(self._conns):
            self.counters.resets += 1  # before the RST: the peer may see it at once
            conn.reset()
            for t in conn.tasks:  # a frozen one would otherwise wait for a thaw
                t.cancel()

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, close every connection, join the loop if it is the proxy's own."""
        if self._closed:
            return
        self._closed = True
        if not self._loop.loop.is_closed():
            self._loop.call(self._stop())
        if self._own_loop:
            self._loop.close()

    async def _stop(self) -> None:
        self._server.close()
        tasks = [t for c in self._conns for t in c.tasks]
        for conn in list(self._conns):
            conn.client.transport.abort()
            conn.upstream.transport.abort()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the data path (on the loop) -----------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = self.counters
        c.connections += 1
        if self._dead or self._closed:
            c.refused += 1
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c.upstream_errors += 1
            _rst(writer)
            return
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        c.active += 1
        try:
            conn.tasks = [
                asyncio.ensure_future(self._direction(conn, reader, up_writer, "up")),
                asyncio.ensure_future(self._direction(conn, up_reader, writer, "down")),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            c.active -= 1
            self._conns.discard(conn)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _direction(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        way: Literal["up", "down"],
    ) -> None:
        """Read segments as they come and forward each when the impairments let it go."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(conn, queue, writer, way))
        due = 0.0
        try:
            while True:
                try:
                    data = await reader.read(_READ)
                except OSError:
                    data = _EOF
                if way == "up":
                    self.counters.received_up += len(data)
                else:
                    self.counters.received_down += len(data)
                imp = self.up if way == "up" else self.down
                extra = imp.latency + (self._rng.uniform(0, imp.jitter) if imp.jitter else 0)
                due = max(due, time.monotonic() + extra)
                queue.put_nowait((due, data))
                if data == _EOF or sender.done():
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    async def _send(
        self,
        conn: _Conn,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        way: Literal["up", "down"],
    ) -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._thawed.wait()
            if data == _EOF:
                if writer.can_write_eof() and not writer.is_closing():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            try:
                await self._forward(data, writer, way)
            except _Reset:
                self.counters.resets += 1
                conn.reset()
                return
            except OSError:
                conn.client.transport.abort()
                conn.upstream.transport.abort()
                return

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, way: str) -> None:
        imp = self.up if way == "up" else self.down
        rng = self._rng
        if imp.resets and rng.random() < imp.resets:
            raise _Reset
        if imp.loss and rng.random() < imp.loss:
            self.counters.stalls += 1
            await asyncio.sleep(imp.rto)
        for i in range(0, len(data), _PIECE):
            piece = data[i : i + _PIECE]
            if imp.bandwidth:
                now = time.monotonic()
                start = max(now, self._link_free[way])
                self._link_free[way] = start + len(piece) / imp.bandwidth
                await asyncio.sleep(self._link_free[way] - now)
                await self._thawed.wait()  # frozen while it waited for the link
            # Counted before the write: write() sends at once and releases the GIL in send(),
            # so the peer may read the bytes before this thread runs its next line.
            if way == "up":
                self.counters.bytes_up += len(piece)
            else:
                self.counters.bytes_down += len(piece)
            writer.write(piece)
            await writer.drain()


def _parse(upstream: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(upstream, str):
        rest = upstream.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream {upstream!r} is not 'scheme://host:port'")
        return host, int(port)
    host, port = upstream[0], upstream[1]
    return str(host), int(port)
