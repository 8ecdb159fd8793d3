"""Peer reads on the multi-host bed (issue 21): one truth on every host through a peer.

Three hosts, each a process with its own directories and a skewed clock, each running a
Dask worker (scheduler on host 0); the S3 node is a moto server every host reaches
through its own proxy link. The writer is on host A, the reader on host B, and host C's
cache holds the key: B reads through C when nothing was written, and after a write on A
returns, a read on B that depends on it never gets C's old copy. Counted, not timed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from swarmstore.testing.hosts import HostBed, current_host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OFFSETS = [0.0, 90.0, -240.0]  # seconds: the hosts' clocks disagree by minutes
A, B, C = "writer", "reader", "holder"


def store_here(prefix: str) -> Any:
    from swarmstore.storage import NodeSpec, ReplicatedStore

    h = current_host()
    url, opts = f"s3://{h.bucket}/{prefix}", h.storage_options(0)
    node = NodeSpec(url, name=f"{prefix}-n0", storage_options=opts)
    return ReplicatedStore([node], replicas=1, write_quorum=1, state_dir=h.state_dir)


def read(prefix: str, key: str, *deps: object) -> bytes:
    from swarmstore.cache import worker_cache

    return worker_cache(store_here(prefix)).get_sync(key).to_bytes()


def write(prefix: str, key: str, data: bytes) -> None:
    from zarr.core.buffer import cpu

    from swarmstore.cache import worker_cache

    worker_cache(store_here(prefix)).set_sync(key, cpu.Buffer.from_bytes(data))


def figures(prefix: str) -> dict[str, Any]:
    from distributed import get_worker

    registry = get_worker().plugins["swarmstore-cache"].registry
    store = registry.get(store_here(prefix))
    return {"ns": store.namespace, "reads": store.stats()["backing"]["reads"],
            "peer": registry.peer.stats(), "host": current_host().name}  # fmt: skip


def holds(dask_scheduler: Any, worker: str, ns: str, key: str) -> bool:
    from swarmstore.cache._peerserve import METRIC
    from swarmstore.cache._peersummary import Summary

    ws = next(w for w in dask_scheduler.workers.values() if w.name == worker)
    raw = (ws.metrics or {}).get(METRIC)
    return raw is not None and (ns, key) in Summary.from_bytes(raw)


def value(key: str, gen: int) -> bytes:
    return f"{key}@{gen};".encode() * 4096


#: the bed's Dask processes read these at start: no healthy answer is cut on a loaded machine
ENV = {
    "DASK_SWARMSTORE__NETWORK__DEADLINE_FLOOR": "30s",
    "DASK_SWARMSTORE__CACHE__PEER_TIMEOUT": "30s",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    try:
        yield from _cluster(tmp_path_factory)
    finally:
        mp.undo()


def _cluster(tmp_path_factory):
    from distributed import Client

    from swarmstore.cache import TieredCachePlugin

    with HostBed(tmp_path_factory.mktemp("peers"), hosts=3, nodes=1, clock_offsets=OFFSETS) as bed:
        address = bed.scheduler(host=0)
        for i, name in enumerate((A, B, C)):
            bed.worker(address, host=i, name=name)
        with Client(address, timeout=60) as client:
            client.wait_for_workers(3, timeout=120)
            client.register_plugin(TieredCachePlugin(memory_bytes="64MiB", disk_dir=None))
            yield bed, client
        bed.stop_dask()


def held_by_c(client: Any, prefix: str, key: str) -> None:
    """C reads ``key``; wait until the scheduler's summary of C names it, then one
    directory interval, so B's next read finds it there."""
    client.submit(read, prefix, key, workers=[C], pure=False).result(60)
    ns = client.submit(figures, prefix, workers=[C], pure=False).result(60)["ns"]
    deadline = time.monotonic() + 60
    while not client.run_on_scheduler(holds, worker=C, ns=ns, key=key):
        assert time.monotonic() < deadline, "C's summary never named the key"
        time.sleep(0.05)
    time.sleep(1.1)  # peer-directory-interval: B's listing is due again


def test_a_reader_on_one_host_reads_through_a_peer_and_never_sees_an_old_chunk(cluster):
    bed, client = cluster
    prefix = f"p-{uuid.uuid4().hex[:8]}"
    keys = [f"c/{i}" for i in range(6)]
    for k in keys:
        client.submit(write, prefix, k, value(k, 0), workers=[A], pure=False).result(60)
    # B's path to S3 is slow: a peer is faster (by far: the router ranks by measured time,
    # and on a saturated machine Dask's comms are slow too)
    bed.link(1, 0).set("down", latency=0.5)
    stale = by_peer = 0
    for key in keys:
        held_by_c(client, prefix, key)
        before = client.submit(figures, prefix, workers=[B], pure=False).result(60)
        got = client.submit(read, prefix, key, workers=[B], pure=False).result(60)
        served = client.submit(figures, prefix, workers=[B], pure=False).result(60)
        assert got == value(key, 0)  # nothing written since: C's copy
        peer = served["peer"]["hits"] - before["peer"]["hits"]
        assert peer + served["reads"] - before["reads"] == 1  # one source served it
        by_peer += peer
        new = value(key, 1)
        done = client.submit(write, prefix, key, new, workers=[A], pure=False)
        # C (and B's own RAM) hold the old value until the write's invalidation reaches them
        got = client.submit(read, prefix, key, done, workers=[B], pure=False).result(60)
        stale += got != new
    assert stale == 0
    assert by_peer >= len(keys) // 2, by_peer  # the peer, not S3, served most first reads
    hosts = {client.submit(figures, prefix, workers=[w], pure=False).result(60)["host"]
             for w in (A, B, C)}  # fmt: skip
    assert hosts == {"host0", "host1", "host2"}
