"""A frozen peer (issue 21): a worker process stopped with SIGSTOP still looks like the
holder of its keys (its last summary stands), so a reader asks it; the router cuts the
attempt at its deadline, counts it against the peer, and the read comes from the backing
store. Real worker processes, a real stopped process; counted, not timed."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster, get_worker
from zarr.core.buffer import cpu
from zarr.storage import LocalStore
from zarr.testing.store import LatencyStore

from swarmstore.cache import TieredCachePlugin, worker_cache
from swarmstore.cache._peerserve import METRIC
from swarmstore.cache._peersummary import Summary

pytestmark = [pytest.mark.timeout(240)]

KEYS = [f"c/{i}" for i in range(8)]


def read(backing: Any, keys: list[str]) -> list[bytes]:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = worker_cache(backing)
    return [sync(store.get(k, default_buffer_prototype())).to_bytes() for k in keys]


def figures(backing: Any) -> dict[str, Any]:
    from swarmstore.network import default_router

    registry = get_worker().plugins["swarmstore-cache"].registry
    sources = default_router().figures()["sources"]
    peers = {k: v for k, v in sources.items() if k.startswith("peer:")}
    return {
        "reads": registry.get(backing).stats()["backing"]["reads"],
        "peer": registry.peer.stats(),
        "router_failures": sum(v["failures"] for v in peers.values()),
    }


def summarised(dask_scheduler: Any, address: str, ns: str, keys: list[str]) -> bool:
    raw = (dask_scheduler.workers[address].metrics or {}).get(METRIC)
    return raw is not None and all((ns, k) in Summary.from_bytes(raw) for k in keys)


def poll(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition did not hold in time")
        time.sleep(0.05)


def test_a_frozen_peer_costs_one_cut_attempt_then_the_backing_read(tmp_path: pathlib.Path):
    backing = LatencyStore(LocalStore(tmp_path / "data"), get_latency=0.2)
    for k in KEYS:
        import asyncio

        asyncio.run(backing.set(k, cpu.Buffer.from_bytes(k.encode() * 5000)))
    # a saturated machine may take seconds for a healthy answer: the floor keeps those;
    # a frozen peer never answers, so it is cut all the same (at the floor)
    conf = {
        "swarmstore.cache.peer-directory-interval": "50ms",
        "swarmstore.cache.peer-timeout": "20s",
        "swarmstore.network.deadline-floor": "5s",
    }
    with (
        dask.config.set(conf),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as c,
    ):
        c.register_plugin(TieredCachePlugin(memory_bytes="64MiB", disk_dir=None))
        a, b = sorted(c.scheduler_info()["workers"])
        ns = c.submit(lambda x: worker_cache(x).namespace, backing, workers=[a]).result()
        c.submit(read, backing, KEYS, workers=[a], pure=False).result()
        poll(lambda: c.run_on_scheduler(summarised, address=a, ns=ns, keys=KEYS))
        warm = c.submit(read, backing, KEYS[:4], workers=[b], pure=False).result()
        assert warm == [k.encode() * 5000 for k in KEYS[:4]]
        before = c.submit(figures, backing, workers=[b], pure=False).result()
        assert before["peer"]["hits"] == 4 and before["reads"] == 0
        pid = c.run(os.getpid, workers=[a])[a]
        os.kill(pid, signal.SIGSTOP)
        try:
            got = c.submit(read, backing, KEYS[4:5], workers=[b], pure=False).result(timeout=60)
            after = c.submit(figures, backing, workers=[b], pure=False).result(timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert got == [KEYS[4].encode() * 5000]
        assert after["peer"]["asked"] == before["peer"]["asked"] + 1  # one attempt
        # cut at the router's deadline for the peer, counted against it in the router
        assert after["peer"]["failures"] == 1 and after["router_failures"] == 1
        assert after["reads"] == 1  # then the backing store
