"""ReplicatedStore against plain zarr doing the same work: same nodes, same parallelism.

Usage: ``python benchmarks/bench_storage.py [--quick]``. Both sides go through zarr's async
API on one event loop (so the same chunk concurrency), interleaved, several rounds, the
median (reads: best of the rounds' medians over repeated passes, warm page cache):

- verified read, R=3, W=2 (Rq=2: the value plus one version probe) vs one LocalStore
- verified read, R=2, W=2 (Rq=1: no probe) vs one LocalStore
- write R=3 over 3 local dirs vs plain zarr writing the same array to 3 LocalStores at
  once (the plain way to 3 copies, in parallel)
- S3: 3 moto servers, each its own process. Ours reads three arrays (R=3, Rq=2) at once;
  the peer reads one array from each server's FsspecStore at once (same servers, same
  arrays, same concurrency)
- S3 requests per chunk read, counted at the moto servers (their request logs), ours
  (Rq=2, and R=2 with Rq=1) vs the GETs FsspecStore sends for the same chunks (one each;
  it also sends a HEAD per chunk, which the notes report)

Mutations that make the lines fail: probing every replica instead of Rq-1 (requests line
2.0 -> 3.0), a thread hop per probe instead of one shared hop (local Rq=2 read), writing the
3 copies one after another on the plain side's terms (the write line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zarr.api.asynchronous as za
from _results import Line, emit
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from swarmstore.storage import ReplicatedStore
from swarmstore.testing import S3Endpoint, free_port

CHUNKS = (256, 1024)  # 1 MiB of float32


def data_of(mib: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((mib * 2**18,), dtype="f4").reshape(-1, 1024)


async def write(stores: list[Any], data: np.ndarray) -> float:
    """Write ``data`` to every store at once; seconds."""
    t0 = time.perf_counter()

    async def one(store: Any) -> None:
        arr = await za.create_array(store, shape=data.shape, chunks=CHUNKS, dtype=data.dtype)
        await arr.setitem(slice(None), data)

    await asyncio.gather(*(one(s) for s in stores))
    return time.perf_counter() - t0


async def read(stores: list[Any], data: np.ndarray, passes: int) -> float:
    """Read the array from every store at once, ``passes`` times; the median pass."""
    arrays = [await za.open_array(store=s, mode="r") for s in stores]
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        got = await asyncio.gather(*(a.getitem(slice(None)) for a in arrays))
        times.append(time.perf_counter() - t0)
        assert all(np.array_equal(g, data) for g in got)
    return statistics.median(times)


def _replicated(root: Path, replicas: int, state: str, **kw: Any) -> ReplicatedStore:
    nodes = [f"file://{root}/node{j}" for j in range(3)]
    return ReplicatedStore(nodes, replicas=replicas, state_dir=root / state, create=True, **kw)


async def local(quick: bool) -> None:
    mib = 16 if quick else 64
    data = data_of(mib, 0)
    rounds = 3 if quick else 5
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    w_ours, w_plain, r3, r2, r_plain = [], [], [], [], []
    try:
        for i in range(rounds):
            base = root / f"r{i}"
            ours = _replicated(base / "r3", 3, "s3", write_quorum=2)
            plain3 = [LocalStore(base / f"plain{j}") for j in range(3)]
            first = (ours, plain3) if i % 2 == 0 else (plain3, ours)
            for side in first:
                t = await write(side if isinstance(side, list) else [side], data)
                (w_plain if isinstance(side, list) else w_ours).append(t)
            ours2 = _replicated(base / "r2", 2, "s2")
            await write([ours2], data)
            passes = 3 if quick else 5
            order = [("p", plain3[0]), ("3", ours), ("2", ours2)]
            for tag, store in order if i % 2 == 0 else order[::-1]:
                t = await read([store], data, passes)
                {"p": r_plain, "3": r3, "2": r2}[tag].append(t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    mb = data.nbytes / 1e6
    print(
        f"  local: {mib} MiB, 1 MiB chunks, {rounds} rounds; "
        f"plain read {mb / med(r_plain):.0f} MB/s"
    )
    note = "3 local dirs on one disk; plain zarr writes the same 3 copies at once"
    emit(
        Line(
            "storage",
            "write R=3 (W=2) vs 3 plain LocalStores in parallel",
            med(w_ours),
            med(w_plain),
            "zarr LocalStore x3",
            "s",
            "lower",
            1.10,
            note,
        )
    )
    emit(
        Line(
            "storage",
            "verified read R=3 W=2 (Rq=2) vs LocalStore",
            min(r3),
            min(r_plain),
            "zarr LocalStore",
            "s",
            "lower",
            1.10,
            "value + 1 version probe, one thread hop",
        )
    )
    emit(
        Line(
            "storage",
            "verified read R=2 W=2 (Rq=1) vs LocalStore",
            min(r2),
            min(r_plain),
            "zarr LocalStore",
            "s",
            "lower",
            1.10,
            "the default: no probe",
        )
    )


async def generic(quick: bool) -> None:
    """Generic nodes (records in sidecars): R=2 (Rq=1) over 3 WrapperStore(LocalStore)
    nodes vs one plain WrapperStore(LocalStore), the same wrapper zarr reads through."""
    mib = 16 if quick else 64
    data = data_of(mib, 1)
    rounds, passes = (3, 3) if quick else (5, 5)
    root = Path(tempfile.mkdtemp(prefix="bench-generic-"))
    ours_t, plain_t = [], []
    try:
        for i in range(rounds):
            base = root / f"r{i}"
            nodes = [WrapperStore(LocalStore(base / f"node{j}")) for j in range(3)]
            ours = ReplicatedStore(nodes, replicas=2, state_dir=base / "state")
            plain = WrapperStore(LocalStore(base / "plain"))
            await write([ours, plain], data)
            order = [(ours_t, ours), (plain_t, plain)]
            for times, store in order if i % 2 == 0 else order[::-1]:
                times.append(await read([store], data, passes))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(Line("storage", "verified read R=2 (Rq=1) over generic nodes (WrapperStore)",
              min(ours_t), min(plain_t), "zarr WrapperStore(LocalStore)", "s", "lower", 1.25,
              "records in sidecars: 2 GETs per chunk read (data, sidecar) vs 1"))  # fmt: skip


@contextlib.contextmanager
def logged_moto(log: Path):
    """A moto server process whose request log (stderr) goes to ``log``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=f,
            env=env,
        )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield S3Endpoint(url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def requests(logs: list[Path], prefix: str) -> dict[str, int]:
    """Requests the servers logged for the chunks of the array under ``prefix``, by method."""
    out: dict[str, int] = {}
    pattern = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|DELETE) (\S+)')
    for log in logs:
        for m in pattern.finditer(log.read_text(errors="replace")):
            if f"/{prefix}/c/" in m.group(2):
                out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


async def s3(quick: bool) -> None:
    mib = 8 if quick else 24
    data = data_of(mib, 1)
    nchunks = data.nbytes // (CHUNKS[0] * CHUNKS[1] * 4)
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    logs = [tmp / f"moto{j}.log" for j in range(3)]
    with contextlib.ExitStack() as stack:
        eps = [stack.enter_context(logged_moto(log)) for log in logs]
        buckets = [e.make_bucket() for e in eps]

        def fs_store(j: int, path: str) -> FsspecStore:
            return FsspecStore(eps[j].filesystem(asynchronous=True), path=f"{buckets[j]}/{path}")

        def ours(path: str, replicas: int) -> ReplicatedStore:
            nodes = [fs_store(j, path) for j in range(replicas)]
            return ReplicatedStore(nodes, replicas=replicas, state_dir=tmp / path)

        plain = [fs_store(j, f"plain{j}") for j in range(3)]
        mine = [ours(f"ours{i}", 3) for i in range(3)]
        await asyncio.gather(
            write(plain[:1], data), write(plain[1:2], data), write(plain[2:], data)
        )
        for m in mine:
            await write([m], data)
        one = ours("rq1", 2)
        await write([one], data)
        passes = 2 if quick else 3
        t_plain, t_ours = [], []
        for i in range(3 if quick else 5):
            for side in (plain, mine) if i % 2 == 0 else (mine, plain):
                (t_plain if side is plain else t_ours).append(await read(side, data, passes))
        # requests per chunk read, at the servers: one pass each, logs read after
        before = {p: requests(logs, p) for p in ("plain0", "ours0", "rq1")}
        await read(plain[:1], data, 1)
        await read(mine[:1], data, 1)
        await read([one], data, 1)
        await asyncio.sleep(0.5)  # the servers log after answering
        after = {p: requests(logs, p) for p in ("plain0", "ours0", "rq1")}
        for s in (*mine, one):
            await s.aclose()
    shutil.rmtree(tmp, ignore_errors=True)
    per = {p: sum(after[p].values()) - sum(before[p].values()) for p in after}
    gets = after["plain0"].get("GET", 0) - before["plain0"].get("GET", 0)
    fsspec = f"FsspecStore itself sent {per['plain0'] / nchunks:g} requests per chunk"
    emit(
        Line(
            "storage",
            "S3 verified read R=3 (Rq=2), 3 arrays over 3 moto servers",
            min(t_ours),
            min(t_plain),
            "FsspecStore x3, same servers",
            "s",
            "lower",
            1.10,
            f"{mib} MiB per array, {nchunks} chunks",
        )
    )
    emit(
        Line(
            "storage",
            "S3 requests per chunk read, R=3 W=2 (Rq=2)",
            per["ours0"] / nchunks,
            gets / nchunks,
            "FsspecStore's GETs",
            "requests",
            "lower",
            2.0,
            f"at the moto servers: one GET + at most one small request; {fsspec}",
        )
    )
    emit(
        Line(
            "storage",
            "S3 requests per chunk read, R=2 W=2 (Rq=1)",
            per["rq1"] / nchunks,
            gets / nchunks,
            "FsspecStore's GETs",
            "requests",
            "lower",
            1.0,
            f"at the moto servers: zero extra with Rq=1; {fsspec}",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["local", "generic", "s3"])
    args = parser.parse_args()
    if args.only in (None, "local"):
        asyncio.run(local(args.quick))
    if args.only in (None, "generic"):
        asyncio.run(generic(args.quick))
    if args.only in (None, "s3"):
        asyncio.run(s3(args.quick))
    sys.exit(0)


if __name__ == "__main__":
    main()
