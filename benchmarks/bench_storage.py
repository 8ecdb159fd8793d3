"""ReplicatedStore against the plain zarr way of doing the same job.

Usage: ``python benchmarks/bench_storage.py [--quick]``. Each ratio compares both sides
measured in the same run, through zarr (array writes and full reads):

- R=3 write over 3 local-dir nodes vs one LocalStore            (goal <= 1.5x the time)
- read with checksum verification vs one LocalStore              (goal <= 1.10x the time)
- the same two over 3 S3 nodes vs one FsspecStore, moto in its own process
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from swarmstore.storage import ReplicatedStore
from swarmstore.testing import moto_server


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(make_plain, make_swarm, data: np.ndarray, chunks: tuple[int, ...], repeat: int):
    """(plain write, swarm write, plain read, swarm read) seconds, interleaved runs."""
    results = {"pw": [], "sw": [], "pr": [], "sr": []}
    for i in range(repeat):
        for side in ("plain", "swarm"):
            store = (make_plain if side == "plain" else make_swarm)(i)
            t0 = time.perf_counter()
            arr = zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype)
            arr[:] = data
            results["pw" if side == "plain" else "sw"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = zarr.open_array(store, mode="r")[:]
            results["pr" if side == "plain" else "sr"].append(time.perf_counter() - t0)
            assert np.array_equal(back, data)
    return {k: statistics.median(v) for k, v in results.items()}


def report(label: str, plain: str, nbytes: int, r: dict[str, float]) -> None:
    mb = nbytes / 1e6
    print(
        f"  {label}: write {mb / r['pw']:.0f} MB/s {plain} vs {mb / r['sw']:.0f} MB/s R=3; "
        f"read {mb / r['pr']:.0f} MB/s {plain} vs {mb / r['sr']:.0f} MB/s verified"
    )
    print(f"{label} R=3 write vs {plain}: {r['sw'] / r['pw']:.2f}x (goal <= 1.5)")
    print(f"{label} verified read vs {plain}: {r['sr'] / r['pr']:.2f}x (goal <= 1.10)")


def local(quick: bool) -> None:
    mib = 32 if quick else 128
    data = np.random.default_rng(0).random((mib * 2**18,), dtype="f4").reshape(-1, 1024)
    chunks = (256, 1024)  # 1 MiB chunks
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        r = measure(
            lambda i: LocalStore(root / f"plain{i}"),
            lambda i: ReplicatedStore(
                [f"file://{root}/run{i}/node{j}" for j in range(3)],
                replicas=3,
                state_dir=root / f"state{i}",
            ),
            data,
            chunks,
            repeat=3,
        )
        report("local", "LocalStore", data.nbytes, r)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def s3(quick: bool) -> None:
    mib = 8 if quick else 32
    data = np.random.default_rng(1).random((mib * 2**18,), dtype="f4").reshape(-1, 1024)
    chunks = (256, 1024)
    with moto_server(process=True) as endpoint:
        bucket = endpoint.make_bucket()
        r = measure(
            lambda i: FsspecStore(endpoint.filesystem(asynchronous=True), path=f"{bucket}/p{i}"),
            lambda i: ReplicatedStore(
                [
                    FsspecStore(endpoint.filesystem(asynchronous=True), path=f"{bucket}/r{i}/n{j}")
                    for j in range(3)
                ],
                replicas=3,
                state_dir=tempfile.mkdtemp(),
            ),
            data,
            chunks,
            repeat=3 if quick else 5,
        )
        report("s3", "FsspecStore", data.nbytes, r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    local(args.quick)
    s3(args.quick)


if __name__ == "__main__":
    main()
