"""CheckpointManager against writing and reading the same arrays with plain zarr.

Usage: ``python benchmarks/bench_checkpoint.py [--quick]``. Both sides run in the same
process on the same store kind, interleaved, median of the repeats:

- full checkpoint throughput vs ``zarr.create_array(...)[:] = x``   (goal >= 0.8x)
- bytes an incremental checkpoint writes when 1% of the chunks changed, over the bytes
  of a full one, counted at the store (objects, manifest, markers)   (goal <= 0.02x)
- restore read (xxh3-verified) vs a plain zarr read                  (goal >= 0.9x)

on a local directory and on S3 (moto in its own process). The array is 256 MiB of
float32 in 1 MiB chunks (``--quick``: 64 MiB in 256 KiB chunks).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from swarmstore.checkpoint import CheckpointManager
from swarmstore.testing import moto_server


class CountingStore(WrapperStore):
    """Counts the bytes written through it."""

    def __init__(self, store):
        super().__init__(store)
        self.written = 0

    async def set(self, key, value):
        self.written += len(value)
        await self._store.set(key, value)

    async def set_if_not_exists(self, key, value):
        self.written += len(value)
        await self._store.set_if_not_exists(key, value)


def median_times(fns: dict[str, Callable[[int], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved so load hits both sides alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compare(label: str, make: Callable[[str], object], x: np.ndarray, chunks, repeat: int):
    enc = {"x": {"chunks": chunks}}
    plain = {i: make(f"plain-{i}") for i in range(repeat)}
    ckpt = {i: CheckpointManager(make(f"ckpt-{i}")) for i in range(repeat)}

    def plain_write(i):
        zarr.create_array(plain[i], shape=x.shape, chunks=chunks, dtype=x.dtype)[:] = x

    def ckpt_write(i):
        ckpt[i].save({"x": x}, encoding=enc)

    w = median_times({"plain": plain_write, "ckpt": ckpt_write}, repeat)

    def plain_read(i):
        assert np.array_equal(zarr.open_array(plain[i], mode="r")[:], x)

    def ckpt_read(i):
        assert np.array_equal(ckpt[i].restore()["x"][:], x)

    r = median_times({"plain": plain_read, "ckpt": ckpt_read}, repeat)
    mb = x.nbytes / 1e6
    print(f"full checkpoint vs plain zarr write ({label}): {w['plain'] / w['ckpt']:.2f}x "
          f"(goal >= 0.8)")
    print(f"restore read vs plain zarr read ({label}): {r['plain'] / r['ckpt']:.2f}x "
          f"(goal >= 0.9)")
    print(f"  raw ({label}): write {mb / w['plain']:.0f} MB/s plain vs {mb / w['ckpt']:.0f} MB/s "
          f"checkpoint; read {mb / r['plain']:.0f} MB/s plain vs {mb / r['ckpt']:.0f} MB/s "
          f"restore; {x.nbytes >> 20} MiB, {len(ckpt[0].manifest(0).entries) - 2} chunks")


def incremental(make: Callable[[str], object], x: np.ndarray, chunks) -> None:
    counting = CountingStore(make("incremental"))
    mgr = CheckpointManager(counting)
    enc = {"x": {"chunks": chunks}}
    mgr.save({"x": x}, encoding=enc)
    full = counting.written
    grid = [s // c for s, c in zip(x.shape, chunks, strict=True)]
    nchunks = grid[0] * grid[1]
    changed = max(1, round(nchunks / 100))
    rng = np.random.default_rng(1)
    y = x.copy()
    for flat in rng.choice(nchunks, changed, replace=False):
        i, j = divmod(int(flat), grid[1])
        y[i * chunks[0], j * chunks[1]] += 1.0
    counting.written = 0
    info = mgr.save({"x": y}, encoding=enc)
    inc = counting.written
    assert info.written_objects == changed, info
    print(f"incremental bytes, {changed} of {nchunks} chunks changed: {inc / full:.4f}x "
          f"(goal <= 0.02)")
    print(f"  raw: full {full / 1e6:.1f} MB, incremental {inc / 1e6:.2f} MB "
          f"({info.written_objects} objects written, {info.reused_objects} reused)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    side, chunk = (4096, 256) if args.quick else (8192, 512)
    repeat = 2 if args.quick else 3
    x = np.random.default_rng(0).random((side, side), dtype=np.float32)
    chunks = (chunk, chunk)
    tmp = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    try:
        def local(name: str) -> LocalStore:
            return LocalStore(tmp / name)

        incremental(local, x, chunks)
        compare("local dir", local, x, chunks, repeat)
        with moto_server(process=True) as endpoint:
            bucket = endpoint.make_bucket()
            fs = endpoint.filesystem(asynchronous=True)

            def s3(name: str) -> FsspecStore:
                return FsspecStore(fs, path=f"{bucket}/{name}-{uuid.uuid4().hex[:6]}")

            compare("S3 on moto", s3, x, chunks, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
