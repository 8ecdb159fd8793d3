"""Benchmark peer-cache reads (issue 21) on the multi-host test bed, peers on vs off.

Usage: ``python benchmarks/bench_peercache.py [--quick]``. One moto S3 node (its own
process) that every host reaches through its own proxy link, 20-40 ms each way down; a
Dask scheduler and workers as processes of the bed's hosts, each worker with
TieredCachePlugin (RAM tier). The same run does every scenario twice, on fresh data:
with the peer tier (the plugin's default) and without it (every worker's peer tier
taken out of the chain before the data is first read):

1. **scale-up**: a pass over the chunks on 2 workers, each chunk read on its owner (the
   chunk-affinity ring), then 2 workers join and a second pass reads each chunk on its
   new owner: the moved chunks come from their old owners' caches, or from S3;
2. **stencil**: after a warm pass on 4 workers, each chunk's task reads it and both
   neighbours (owned by other workers);
3. **client**: after a warm pass, the client process reads every chunk through a
   TieredStore with a ``PeerTier.of_client`` (or without it).

Lines, each ours = peers on, peer = peers off, same work, same run: remote (S3) bytes
<= 10%, wall time <= 0.7x, per scenario; and the p99 of a peer-served 1 MiB chunk read on
the client <= 0.5x the p99 of the same reads from S3 through the proxy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
from _results import Line, emit

from swarmstore.testing.hosts import HostBed, current_host

MiB = 1024**2


# --- in worker processes ---------------------------------------------------------------------
def store_for(prefix: str, info: Any = None) -> Any:
    """The store over ``prefix`` as this host reaches it (its own proxy link)."""
    from swarmstore.storage import NodeSpec, ReplicatedStore

    h = info or current_host()
    node = NodeSpec(
        f"s3://{h.bucket}/{prefix}", name=f"{prefix}-n0", storage_options=h.storage_options(0)
    )
    return ReplicatedStore([node], replicas=1, write_quorum=1, state_dir=h.state_dir)


def _registry(worker: Any = None) -> Any:
    from distributed import get_worker

    return (worker or get_worker()).plugins["swarmstore-cache"].registry


def w_peers(on: bool, dask_worker: Any = None) -> None:
    """Put the peer tier in this worker's chain (stores made from now on), or take it out."""
    registry = _registry(dask_worker)
    # kept on the registry: this module's globals travel by value with each call
    tier = registry.__dict__.setdefault("_bench_peer", registry.peer)
    registry.peer = tier if on else None


def w_read(prefix: str, keys: list[str]) -> int:
    from swarmstore.cache import worker_cache

    store = worker_cache(store_for(prefix))
    return sum(len(store.get_sync(k).to_bytes()) for k in keys)


def w_remote(prefix: str, dask_worker: Any = None) -> dict[str, Any]:
    """S3 bytes this worker's cache read for ``prefix``, its namespace, its peer hits."""
    registry = _registry(dask_worker)
    store = registry.get(store_for(prefix))
    return {
        "bytes": store.stats()["backing"]["bytes"],
        "ns": store.namespace,
        "peer_hits": registry.peer.stats()["hits"] if registry.peer is not None else 0,
    }


def s_summarised(dask_scheduler: Any, wanted: dict[str, list[list[str]]]) -> bool:
    from swarmstore.cache._peerserve import METRIC
    from swarmstore.cache._peersummary import Summary

    for addr, pairs in wanted.items():
        raw = (dask_scheduler.workers[addr].metrics or {}).get(METRIC)
        if raw is None or not all(tuple(p) in Summary.from_bytes(raw) for p in pairs):
            return False
    return True


# --- the run ---------------------------------------------------------------------------------
def owners(client: Any, keys: list[str]) -> dict[str, list[str]]:
    """Each worker's keys by the chunk-affinity ring (compute's placement rule)."""
    from swarmstore.cache._peerdir import Directory, ring_identity

    d = Directory()
    workers = client.scheduler_info(n_workers=-1)["workers"]
    d.update(
        [
            {"address": a, "identity": ring_identity(w["name"], a), "nthreads": w["nthreads"]}
            for a, w in workers.items()
        ]
    )
    out: dict[str, list[str]] = {a: [] for a in workers}
    for k in keys:
        out[d.owner(k)].append(k)  # type: ignore[index]
    return out


def run_pass(client: Any, prefix: str, plan: dict[str, list[str]]) -> float:
    t0 = time.perf_counter()
    futs = [
        client.submit(w_read, prefix, ks, workers=[a], pure=False, allow_other_workers=False)
        for a, ks in plan.items()
        if ks
    ]
    client.gather(futs)
    return time.perf_counter() - t0


def remote_bytes(client: Any, prefix: str) -> int:
    return sum(r["bytes"] for r in client.run(w_remote, prefix).values())


def wait_summaries(client: Any, prefix: str, plan: dict[str, list[str]]) -> None:
    ns = next(iter(client.run(w_remote, prefix).values()))["ns"]
    wanted = {a: [[ns, k] for k in ks] for a, ks in plan.items() if ks}
    deadline = time.monotonic() + 60
    while not client.run_on_scheduler(s_summarised, wanted=wanted):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers' cache summaries never reached the scheduler")
        time.sleep(0.1)
    time.sleep(1.1)  # readers' listings are due again (peer-directory-interval): steady state


def write_data(bed: HostBed, prefix: str, n: int, size: int) -> list[str]:
    import zarr

    store = store_for(prefix, bed.host(0).info)
    rng = np.random.default_rng(0)
    z = zarr.create_array(store, shape=(n * size // 8,), chunks=(size // 8,), dtype="f8")
    z[:] = rng.random(n * size // 8)
    return ["zarr.json"] + [f"c/{i}" for i in range(n)]


def scale_up(bed: HostBed, client: Any, sched: str, prefix: str, keys: list[str], on: bool):
    client.run(w_peers, on)
    run_pass(client, prefix, owners(client, keys))
    before = set(client.scheduler_info()["workers"])
    for host in (1, 2):
        bed.worker(sched, host, name=f"{prefix}-join{host}")
    client.wait_for_workers(4)
    joined = sorted(set(client.scheduler_info()["workers"]) - before)
    client.run(w_peers, on, workers=joined)
    if on:
        wait_summaries(client, prefix, owners_of(client, keys, sorted(before)))
    start = remote_bytes(client, prefix)
    wall = run_pass(client, prefix, owners(client, keys))
    return remote_bytes(client, prefix) - start, wall, joined


def owners_of(client: Any, keys: list[str], workers: list[str]) -> dict[str, list[str]]:
    full = owners(client, keys)
    return {a: ks for a, ks in full.items() if a in workers}


def stencil(client: Any, prefix: str, keys: list[str], on: bool) -> tuple[int, float]:
    client.run(w_peers, on)
    plan = owners(client, keys)
    run_pass(client, prefix, plan)
    if on:
        wait_summaries(client, prefix, plan)
    chunks = keys[1:]
    nbr = {a: [] for a in plan}
    for i, k in enumerate(chunks):
        owner = next(a for a, ks in plan.items() if k in ks)
        nbr[owner] += [chunks[j] for j in (i - 1, i, i + 1) if 0 <= j < len(chunks)]
    start = remote_bytes(client, prefix)
    wall = run_pass(client, prefix, nbr)
    return remote_bytes(client, prefix) - start, wall


def from_client(bed: HostBed, client: Any, prefix: str, keys: list[str], on: bool):
    """Warm the workers, then read every chunk on the client: (S3 bytes, wall, latencies).

    The latencies come from ``rounds`` more reads of every chunk with no RAM tier on the
    client, so each is a peer read (on) or an S3 read (off).
    """
    from swarmstore.cache import MemoryTier, PeerTier, TieredStore

    client.run(w_peers, True)
    plan = owners(client, keys)
    run_pass(client, prefix, plan)
    wait_summaries(client, prefix, plan)
    peer = [PeerTier.of_client(client)] if on else []
    store = TieredStore(store_for(prefix, bed.host(0).info), tiers=[MemoryTier(2**30), *peer])
    t0 = time.perf_counter()
    for k in keys[1:]:
        store.get_sync(k)
    wall = time.perf_counter() - t0
    bare = TieredStore(store_for(prefix, bed.host(0).info), tiers=peer)
    times = []
    for _ in range(3):
        for k in keys[1:]:
            t = time.perf_counter()
            bare.get_sync(k)
            times.append(time.perf_counter() - t)
    served = peer[0].stats()["hits"] if on else 0
    return store.stats()["backing"]["bytes"], wall, times, served


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    n = 24 if args.quick else 96
    from distributed import Client

    from swarmstore.cache import TieredCachePlugin

    res: dict[str, dict[bool, Any]] = {"scale": {}, "stencil": {}, "client": {}}
    with tempfile.TemporaryDirectory() as tmp, HostBed(tmp, hosts=3, nodes=1) as bed:
        sched = bed.scheduler(0)
        for host in (1, 2):
            bed.worker(sched, host)
        with Client(sched) as client:
            client.wait_for_workers(2)
            client.register_plugin(TieredCachePlugin(memory_bytes="1GiB", disk_dir=None))
            runs: dict[bool, dict[str, tuple[str, list[str]]]] = {}
            for on in (False, True):
                tag = f"{'on' if on else 'off'}-{uuid.uuid4().hex[:6]}"
                runs[on] = {s: (f"{s}-{tag}", write_data(bed, f"{s}-{tag}", n, MiB)) for s in res}
            for link in bed.links_to(0):
                link.set("down", latency=0.02, jitter=0.02)  # 20-40 ms
            for on in (False, True):
                prefix, keys = runs[on]["scale"]
                b, w, joined = scale_up(bed, client, sched, prefix, keys, on)
                res["scale"][on] = (b, w)
                res["stencil"][on] = stencil(client, *runs[on]["stencil"], on)
                res["client"][on] = from_client(bed, client, *runs[on]["client"], on)
                client.retire_workers(joined, close_workers=True)
                while len(client.scheduler_info()["workers"]) > 2:
                    time.sleep(0.1)
    return report(res, n)


def lines_of(res: dict[str, dict[bool, Any]], n: int) -> list[Line]:
    """The lines of one run: per scenario remote bytes and wall, and the client's p99."""
    lines = []
    work = {"scale": "second pass after 2 -> 4 workers", "stencil": "stencil over neighbours",
            "client": "reads from the client"}  # fmt: skip
    note = f"{n} x 1 MiB chunks, S3 behind a 20-40 ms proxy; loaded shared machine"
    for s, what in work.items():
        on, off = res[s][True], res[s][False]
        lines.append(Line("peercache", f"{what}: remote bytes", ours=on[0], peer=off[0],
                          peer_name="no peer tier", unit="B", better="lower", goal=0.10,
                          notes=note))  # fmt: skip
        lines.append(Line("peercache", f"{what}: wall time", ours=on[1], peer=off[1],
                          peer_name="no peer tier", unit="s", better="lower", goal=0.7,
                          notes=note))  # fmt: skip
    p_on = float(np.quantile(res["client"][True][2], 0.99))
    p_off = float(np.quantile(res["client"][False][2], 0.99))
    served = res["client"][True][3]
    p50s = [float(np.median(res["client"][on][2])) * 1e3 for on in (True, False)]
    note = (
        f"{len(res['client'][True][2])} reads each, {served} peer-served; p50 "
        f"{p50s[0]:.1f} vs {p50s[1]:.1f} ms; loaded machine"
    )
    lines.append(Line("peercache", "p99 of a 1 MiB chunk read on the client", ours=p_on,
                      peer=p_off, peer_name="proxied S3 (no peer tier)", unit="s",
                      better="lower", goal=0.5, notes=note))  # fmt: skip
    return lines


def report(res: dict[str, dict[bool, Any]], n: int) -> int:
    lines = [emit(line) for line in lines_of(res, n)]
    return 0 if all(ln.passed is not False for ln in lines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
