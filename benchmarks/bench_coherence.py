"""What cluster-wide cache coherence costs a warm hit (issue 12).

Usage: ``python benchmarks/bench_coherence.py [--quick]``. A Dask cluster (2 in-process
workers, 1 thread each) with :class:`~swarmstore.cache.TieredCachePlugin` on every worker;
each worker reads a zarr array (16 MiB in 64 KiB chunks, a quarter with --quick) through
its worker cache once to fill the RAM tier, then times whole-array reads that all hit it.
The same work runs with ``coherence=False`` and ``coherence=True`` (alternating clusters,
best read of each), and one line compares them:

- warm RAM hits with coherence on vs off (time ratio, goal <= 1.10: coherence is paid on
  writes, where each one is announced, not on hits).

A second line, context only, gives what a write costs with its announcement (one
``set`` per chunk, on vs off).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import tempfile
import time

import numpy as np
import zarr
from _results import Line, emit
from distributed import Client, LocalCluster
from zarr.storage import LocalStore

from swarmstore.cache import TieredCachePlugin, worker_cache

KiB = 1024


def warm_reads(backing: LocalStore, repeat: int) -> float:
    """On a worker: fill its cache with the whole array, then the best of ``repeat`` reads."""
    arr = zarr.open_array(worker_cache(backing), mode="r")
    arr[:]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        arr[:]
        best = min(best, time.perf_counter() - t0)
    assert worker_cache(backing).stats()["memory"]["hits"] > 0
    return best


def writes(backing: LocalStore, value: float) -> float:
    """On a worker: overwrite every chunk of the array through its cache; the time taken."""
    arr = zarr.open_array(worker_cache(backing), mode="r+")
    t0 = time.perf_counter()
    arr[:] = value
    return time.perf_counter() - t0


def measure(backing: LocalStore, nbytes: int, *, coherence: bool, repeat: int) -> dict:
    plugin = TieredCachePlugin(memory_bytes=4 * nbytes, disk_dir="", coherence=coherence)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.register_plugin(plugin)
        workers = sorted(client.scheduler_info()["workers"])
        hits = [
            client.submit(warm_reads, backing, repeat, workers=[w], pure=False) for w in workers
        ]
        read = min(client.gather(hits))
        write = client.submit(writes, backing, 1.0, workers=workers[:1], pure=False).result()
    return {"read": read, "write": write}


def main() -> int:
    logging.getLogger("distributed").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nbytes = (4 if args.quick else 16) * 1024 * KiB
    rounds, repeat = (2, 5) if args.quick else (3, 10)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-coherence-"))
    backing = LocalStore(tmp / "arr")
    n, chunk = nbytes // 4, 64 * KiB // 4
    data = np.random.default_rng(0).random(n, dtype="f4")
    zarr.create_array(backing, shape=(n,), chunks=(chunk,), dtype="f4")[:] = data
    best: dict[bool, dict[str, float]] = {}
    for _ in range(rounds):
        for coherence in (False, True):  # alternate: drift on a shared machine hits both
            got = measure(backing, nbytes, coherence=coherence, repeat=repeat)
            prev = best.setdefault(coherence, got)
            best[coherence] = {k: min(prev[k], got[k]) for k in got}
    chunks = n // chunk
    emit(Line("cache", f"warm RAM hits, coherence on vs off ({chunks} x 64 KiB chunks)",
              ours=best[True]["read"], peer=best[False]["read"],
              peer_name="the same cache, coherence off", unit="s", better="lower",
              goal=1.10))  # fmt: skip
    emit(Line("cache", f"write of {chunks} chunks with announcements vs without",
              ours=best[True]["write"], peer=best[False]["write"],
              peer_name="the same cache, coherence off", unit="s", better="lower",
              goal=None))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
