"""The multi-host test bed: separate processes, own dirs and clocks, one proxy link per path."""

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from bedsupport import poll

from swarmstore import _clock
from swarmstore.errors import is_transport_error
from swarmstore.testing.hosts import HostBed, current_host

OFFSETS = [0.0, 120.0, -300.0]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    with HostBed(tmp_path_factory.mktemp("bed"), hosts=3, nodes=2, clock_offsets=OFFSETS) as b:
        yield b


@pytest.fixture(autouse=True)
def healthy_links(bed):
    yield
    for row in bed._links:
        for p in row:
            p.clear()


def whoami() -> dict:
    h = current_host()
    return {
        "pid": os.getpid(),
        "name": h.name,
        "state": h.state_dir,
        "cache": h.cache_dir,
        "skew": _clock.wall() - time.time(),
        "offset": _clock.offset(),
    }


def put(node: int, key: str, data: bytes) -> None:
    h = current_host()
    h.filesystem(node).pipe(f"{h.bucket}/{key}", data)


def get(node: int, key: str) -> bytes:
    h = current_host()
    # no botocore retries: the first transport error reaches the caller
    fs = h.filesystem(node, config_kwargs={"retries": {"max_attempts": 1}})
    fs.retries = 1  # nor s3fs's own
    return fs.cat(f"{h.bucket}/{key}")


def test_hosts_are_separate_processes_with_own_dirs_and_clocks(bed):
    seen = [bed.host(i).run(whoami) for i in range(3)]
    pids = {s["pid"] for s in seen}
    assert len(pids) == 3 and os.getpid() not in pids
    assert [s["pid"] for s in seen] == [h.pid for h in bed.hosts]
    assert len({s["state"] for s in seen} | {s["cache"] for s in seen}) == 6
    for s, offset in zip(seen, OFFSETS, strict=True):
        assert Path(s["state"]).is_dir() and Path(s["cache"]).is_dir()
        assert s["offset"] == offset
        assert abs(s["skew"] - offset) < 1.0  # the host's wall clock really is skewed


def test_each_host_reaches_each_node_through_its_own_link(bed):
    before = {(i, j): bed.link(i, j).counters.bytes_up for i in range(3) for j in range(2)}
    bed.host(1).run(put, 0, "a", b"x" * 50_000)
    after = {(i, j): bed.link(i, j).counters.bytes_up for i in range(3) for j in range(2)}
    moved = {k for k in before if after[k] != before[k]}
    assert moved == {(1, 0)} and after[1, 0] - before[1, 0] >= 50_000
    down0 = bed.link(2, 0).counters.bytes_down
    assert bed.host(2).run(get, 0, "a") == b"x" * 50_000
    assert bed.link(2, 0).counters.bytes_down - down0 >= 50_000


def test_impairing_one_path_leaves_the_others_alone(bed):
    bed.host(0).run(put, 1, "b", b"y" * 100)
    bed.link(2, 1).kill()  # host 2 can no longer reach node 1
    with pytest.raises(Exception) as info:
        bed.host(2).run(get, 1, "b")
    assert is_transport_error(info.value), repr(info.value)
    assert bed.link(2, 1).counters.refused >= 1
    assert bed.host(1).run(get, 1, "b") == b"y" * 100  # host 1 to node 1: fine


def test_a_call_through_a_frozen_link_completes_after_thaw(bed):
    bed.host(0).run(put, 0, "c", b"z" * 1000)
    link = bed.link(1, 0)
    link.freeze()
    got = link.counters.received_up
    fut = bed.host(1).submit(get, 0, "c")
    poll(lambda: link.counters.received_up > got, what="host 1's request reached its link")
    assert not fut.done()  # held: no answer while frozen
    link.thaw()
    assert fut.result(60) == b"z" * 1000


def test_exceptions_and_coroutines_come_back(bed):
    def boom(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 7") as info:
        bed.host(0).run(boom, 7)
    assert any("host0" in n for n in getattr(info.value, "__notes__", []))

    async def nap():
        await asyncio.sleep(0)
        return current_host().index

    assert bed.host(2).run(nap) == 2
    assert bed.host(1).run(lambda a, b=0: a + b, 1, b=2) == 3


def worker_identity() -> dict:
    h = current_host()
    import dask.config
    from distributed import get_worker

    return {
        "host": h.name,
        "offset": _clock.offset(),
        "worker": get_worker().name,
        "router_host": dask.config.get("swarmstore.network.host"),
    }


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_scheduler_and_workers_run_on_chosen_hosts(bed):
    from distributed import Client

    address = bed.scheduler(host=0)
    names = [bed.worker(address, host=i) for i in (1, 2)]
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        got = [client.submit(worker_identity, workers=[n], pure=False).result(60) for n in names]
    procs = bed.dask_processes()
    bed.stop_dask()
    assert all(p.poll() is not None for p in procs) and not bed.dask_processes()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(address.rpartition(":")[2])), 5).close()
    assert [g["host"] for g in got] == ["host1", "host2"]
    assert [g["offset"] for g in got] == OFFSETS[1:]
    assert [g["router_host"] for g in got] == ["host1", "host2"]
    assert [g["worker"] for g in got] == names


@pytest.mark.timeout(120)
def test_close_leaves_nothing_running(tmp_path):
    threads = set(threading.enumerate())
    with HostBed(tmp_path, hosts=1, nodes=1) as bed:  # Dask processes: the test above
        pid = bed.host(0).pid
        node = bed.nodes[0].url
        link = bed.link(0, 0).address
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for host, port in [link, tuple(node.rsplit(":", 1))]:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host.replace("http://", ""), int(port)), 5).close()
    poll(lambda: set(threading.enumerate()) <= threads, what="bed threads joined")
