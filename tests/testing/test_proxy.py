"""The impairment proxy: each impairment does what it says, measured by bytes and counts.

Waits are polls with deadlines. The only clock readings are lower bounds (a held segment
can never arrive *sooner* than its delay, however loaded the machine), never upper bounds.
"""

import os
import socket
import threading
import time

import pytest
from bedsupport import EchoServer, poll, recv_exactly

from swarmstore.testing.proxy import Impairment, Proxy, ProxyLoop


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    with Proxy(echo.address, seed=1) as p:
        yield p


def connect(p: Proxy) -> socket.socket:
    s = socket.create_connection(p.address, timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def roundtrip(p: Proxy, payload: bytes) -> bytes:
    with connect(p) as s:
        s.sendall(payload)
        return recv_exactly(s, len(payload))


def test_forwards_both_ways_and_counts_bytes_and_connections(proxy, echo):
    payload = os.urandom(300_000)
    assert roundtrip(proxy, payload) == payload
    c = proxy.counters
    poll(lambda: c.active == 0, what="connection closed")
    assert (c.connections, c.bytes_up, c.bytes_down) == (1, len(payload), len(payload))
    assert c.received_up == c.bytes_up and echo.received == len(payload)
    assert (c.stalls, c.resets, c.refused) == (0, 0, 0)


def test_latency_holds_every_segment_at_least_that_long(proxy):
    proxy.set("down", latency=0.3)
    t0 = time.monotonic()
    assert roundtrip(proxy, b"x" * 10) == b"x" * 10
    assert time.monotonic() - t0 >= 0.3  # a lower bound: load cannot make it fail
    assert proxy.up.latency == 0.0  # one direction only


def test_jitter_never_reorders_the_stream(proxy):
    proxy.set(latency=0.001, jitter=0.02)
    with connect(proxy) as s:
        expected = b""
        for i in range(60):
            msg = f"{i:04d}".encode()
            s.sendall(msg)  # separate segments, each with its own random delay
            expected += msg
        assert recv_exactly(s, len(expected)) == expected


def test_bandwidth_cap_is_shared_by_the_connections_of_a_link(proxy):
    cap = 400_000  # bytes/s, downstream
    proxy.set("down", bandwidth=cap)
    payload = os.urandom(200_000)
    results = []
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=lambda: results.append(roundtrip(proxy, payload))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert results == [payload, payload]
    assert proxy.counters.bytes_down == 2 * len(payload)
    assert elapsed >= 2 * len(payload) / cap * 0.95  # both shared one link's cap


def test_loss_stalls_segments_but_never_loses_bytes(proxy):
    proxy.set("up", loss=1.0, rto=0.05)
    with connect(proxy) as s:
        for _ in range(5):
            s.sendall(b"abcd")
            assert recv_exactly(s, 4) == b"abcd"  # one segment at a time
    assert proxy.counters.stalls == 5
    proxy.set("up", loss=0.3, rto=0.01)
    with connect(proxy) as s:
        for _ in range(40):
            payload = os.urandom(500)
            s.sendall(payload)
            assert recv_exactly(s, 500) == payload
    assert 5 < proxy.counters.stalls < 5 + 40  # some of the 40 segments, not all


def test_resets_reset_the_connection(proxy):
    proxy.set("down", resets=1.0)
    with connect(proxy) as s:
        s.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            data = s.recv(10)
            if not data:  # a FIN instead of a RST would be a failure of the proxy
                raise AssertionError("connection closed cleanly, not reset")
    assert proxy.counters.resets == 1 and proxy.counters.bytes_down == 0


def test_freeze_holds_bytes_until_thaw(proxy, echo):
    proxy.freeze()
    with connect(proxy) as s:
        s.sendall(b"hello")
        poll(lambda: proxy.counters.received_up == 5, what="the proxy holds the request")
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(5)  # no answer while frozen
        assert proxy.counters.bytes_up == 0 and echo.received == 0
        with connect(proxy) as s2:  # new connections are still accepted, and held too
            s2.sendall(b"more")
            poll(lambda: proxy.counters.received_up == 9, what="the second request is held")
        s.setblocking(True)
        s.settimeout(30)
        proxy.thaw()
        assert recv_exactly(s, 5) == b"hello"
    assert proxy.counters.connections == 2


def test_kill_resets_open_connections_and_refuses_new_ones_until_revived(proxy, echo):
    with connect(proxy) as s:
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        proxy.kill()
        with pytest.raises(ConnectionResetError):
            if not s.recv(4):
                raise AssertionError("closed cleanly, not reset")
    for _ in range(3):
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            with connect(proxy) as s:  # the RST may beat connect() itself
                s.sendall(b"x")
                if not s.recv(1):
                    raise AssertionError("closed cleanly, not reset")
    poll(lambda: proxy.counters.refused == 3, what="three refusals counted")
    c = proxy.counters
    assert c.refused == 3 and c.resets == 1 and echo.accepted == 1
    proxy.revive()
    assert roundtrip(proxy, b"back") == b"back"


def test_settings_are_validated(proxy):
    with pytest.raises(ValueError, match="unknown impairments"):
        proxy.set(latncy=1)
    with pytest.raises(ValueError, match="direction"):
        proxy.set("sideways", latency=1)
    with pytest.raises(ValueError, match=">= 0"):
        proxy.set(latency=-1)
    assert proxy.up.latency == 0.0  # a refused setting changes nothing
    with pytest.raises(ValueError, match=">= 0"):
        Impairment(latency=-1).check()
    with pytest.raises(ValueError, match="probabilities"):
        Impairment(loss=2).check()
    with pytest.raises(ValueError, match="bandwidth"):
        Impairment(bandwidth=0).check()
    with pytest.raises(ValueError, match="scheme://host:port"):
        Proxy("nonsense")


def test_close_leaves_no_thread_and_no_listener(echo):
    before = set(threading.enumerate())
    shared = ProxyLoop()
    proxies = [Proxy(echo.address, loop=shared) for _ in range(3)]
    own = Proxy(echo.address)
    held = connect(proxies[0])  # an open connection is closed by close()
    held.sendall(b"x")
    assert recv_exactly(held, 1) == b"x"
    addresses = [p.address for p in [*proxies, own]]
    for p in proxies:
        p.close()
    shared.close()
    own.close()
    own.close()  # idempotent
    # the echo server's handler of the closed connection ends once it reads the close (on a
    # busy machine, after close() returned): poll; a thread of the proxy's never ends
    deadline = time.monotonic() + 30
    while not set(threading.enumerate()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) <= before
    assert held.recv(1) == b""
    held.close()
    for addr in addresses:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr, timeout=5).close()
