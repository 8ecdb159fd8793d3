"""Object-store clients (issue 16): s3fs, obstore, and swarmstore nodes over each.

Usage: ``python benchmarks/bench_obstore.py [--quick | --smoke]``. One moto server in its
own process; 64 KiB objects; each side reads every object through the zarr store API with
16 reads in flight (best of the repeats). Sides:

- ``FsspecStore`` (s3fs) and zarr's ``ObjectStore`` (obstore) on plain objects;
- swarmstore ``ReplicatedStore`` R=1 over an s3fs node (the record in the object's
  metadata, one GET per read), over an obstore node (the record in the object's
  attributes, one GET per read) and over the sidecar fallback on the same obstore store
  (a ``WrapperStore``: the record in a sidecar object, two GETs per read);
- swarmstore R=3 (W=2, so Rq=2: one GET and one HEAD per read) over three obstore nodes;
- swarmstore R=3 in the write-all profile (W=3, so Rq=1: one GET per read) over three
  other obstore nodes: every acknowledged write is on every target, so any one verified
  replica is current; a write needs all three (it fails while any target is down).

Lines: reads/s of swarmstore over obstore against ``ObjectStore`` (goal >= 0.9) and
against ``FsspecStore`` (goal >= 3), of R=3 over obstore nodes against one ``ObjectStore``
(goal >= 0.9; majority and write-all), the write-all profile's cost in writes/s against
the majority's (the fills, timed), and, for context, the other sides' reads/s and every
side's client CPU microseconds per read. ``--smoke`` (8 objects, one pass) only checks
that it runs and exits cleanly (tests/storage/test_clean_exit.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
import uuid
from typing import Any

import numpy as np
from _results import Line, emit
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, WrapperStore

from swarmstore.storage import ReplicatedStore
from swarmstore.testing import moto_server
from swarmstore.testing.fixtures import close_http

PROTO = default_buffer_prototype()
SIZE = 64 * 1024
IN_FLIGHT = 16


async def fill(store: Any, keys: list[str]) -> None:
    body = PROTO.buffer.from_bytes(np.random.default_rng(0).bytes(SIZE))
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(k: str) -> None:
        async with sem:
            await store.set(k, body)

    await asyncio.gather(*map(one, keys))


async def read_all(store: Any, keys: list[str]) -> tuple[float, float]:
    """(seconds, client CPU seconds) to read every key, ``IN_FLIGHT`` at a time."""
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(k: str) -> None:
        async with sem:
            got = await store.get(k, PROTO)
            assert got is not None and len(got) == SIZE

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*map(one, keys))
    return time.perf_counter() - t0, time.process_time() - c0


def sides(endpoint: Any, bucket: str, tmp: str) -> dict[str, Any]:
    def s3fs_store(prefix: str) -> FsspecStore:
        return FsspecStore(endpoint.filesystem(asynchronous=True), path=f"{bucket}/{prefix}")

    def replicated(nodes: list[Any], replicas: int) -> ReplicatedStore:
        return ReplicatedStore(nodes, replicas=replicas, state_dir=f"{tmp}/{uuid.uuid4().hex}")

    obnodes = [endpoint.object_store(bucket, f"r3/n{i}") for i in range(3)]
    allnodes = [endpoint.object_store(bucket, f"r3all/n{i}") for i in range(3)]
    return {
        "fsspec": s3fs_store("plain-fsspec"),
        "obstore": endpoint.object_store(bucket, "plain-obstore"),
        "ours_s3fs": replicated([s3fs_store("r1-s3fs")], 1),
        "ours_obstore": replicated([endpoint.object_store(bucket, "r1-obstore")], 1),
        "ours_sidecar": replicated([WrapperStore(endpoint.object_store(bucket, "r1-side"))], 1),
        "ours_r3_obstore": replicated(obnodes, 3),
        "ours_r3_writeall": ReplicatedStore(
            allnodes, replicas=3, write_quorum=3, state_dir=f"{tmp}/{uuid.uuid4().hex}"
        ),
    }


async def measure(endpoint: Any, bucket: str, n: int, repeat: int) -> dict[str, tuple]:
    """``{side: (reads/s, client CPU us per read, writes/s of its fill)}``."""
    keys = [f"c/{i}" for i in range(n)]
    stores = sides(endpoint, bucket, tempfile.mkdtemp(prefix="bench-obstore-"))
    wrote = {}
    for name, store in stores.items():
        t0 = time.perf_counter()
        await fill(store, keys)
        wrote[name] = n / (time.perf_counter() - t0)
    best: dict[str, tuple[float, float]] = {}
    for r in range(repeat):
        order = list(stores.items())
        for name, store in order if r % 2 == 0 else order[::-1]:  # drift hits every side
            got = await read_all(store, keys)
            best[name] = min(best.get(name, got), got)
    for store in stores.values():
        if isinstance(store, ReplicatedStore):
            await store.aclose()
    close_http(stores["fsspec"].fs)
    close_http(stores["ours_s3fs"].nodes[0].fs)
    return {name: (n / t, 1e6 * cpu / n, wrote[name]) for name, (t, cpu) in best.items()}


LABELS = {
    "fsspec": "zarr FsspecStore (s3fs)",
    "obstore": "zarr ObjectStore (obstore)",
    "ours_s3fs": "swarmstore R=1 over an s3fs node",
    "ours_obstore": "swarmstore R=1 over an obstore node",
    "ours_sidecar": "swarmstore R=1 over a sidecar node (obstore)",
    "ours_r3_obstore": "swarmstore R=3 over obstore nodes",
    "ours_r3_writeall": "swarmstore R=3 write-all (W=3, Rq=1) over obstore nodes",
}
#: (side, peer, goal): the issue's goals, then context lines (no goal)
RATES = [
    ("ours_obstore", "obstore", 0.9),
    ("ours_obstore", "fsspec", 3.0),
    ("ours_r3_obstore", "obstore", 0.9),
    ("ours_r3_writeall", "obstore", 0.9),
    ("obstore", "fsspec", None),
    ("ours_s3fs", "fsspec", None),
    ("ours_sidecar", "obstore", None),
]


def report(r: dict[str, tuple[float, float, float]]) -> None:
    rate = {k: v[0] for k, v in r.items()}
    cpu = {k: v[1] for k, v in r.items()}
    writes = {k: v[2] for k, v in r.items()}
    note = f"64 KiB GETs, {IN_FLIGHT} in flight, one moto server"
    for name, peer, goal in RATES:
        emit(Line("storage", f"reads/s, {LABELS[name]} vs {LABELS[peer]}", rate[name],
                  rate[peer], LABELS[peer], "reads/s", "higher", goal, note))  # fmt: skip
    emit(Line("storage", f"writes/s, {LABELS['ours_r3_writeall']} vs majority (W=2)",
              writes["ours_r3_writeall"], writes["ours_r3_obstore"],
              LABELS["ours_r3_obstore"], "writes/s", "higher", None,
              note + "; one fill pass each: the write-all profile's cost"))  # fmt: skip
    for name in ("fsspec", "ours_s3fs", "ours_obstore", "ours_sidecar", "ours_r3_obstore",
                 "ours_r3_writeall"):  # fmt: skip
        emit(Line("storage", f"client CPU per 64 KiB GET, {LABELS[name]} vs obstore",
                  cpu[name], cpu["obstore"], LABELS["obstore"], "us", "lower", None,
                  note))  # fmt: skip


def main() -> int:
    logging.getLogger("botocore").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    n, repeat = (8, 1) if args.smoke else (128, 2) if args.quick else (512, 3)
    with moto_server(process=True) as endpoint:
        bucket = endpoint.make_bucket()
        report(asyncio.run(measure(endpoint, bucket, n, repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
