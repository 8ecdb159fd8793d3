"""Tiered cache benchmark: warm RAM and disk tiers in both codec pipelines, cold reads, the
disk byte bound, per-hit latency and the RAM policy's scan resistance.

Usage: ``python benchmarks/bench_cache.py [--quick]``. Backing store: S3 on moto in its own
process. Cases: float32 arrays of 1 MiB chunks (256 MiB; 32 MiB with --quick) and of 64 KiB
chunks (64 MiB; 4 MiB), each plain and sharded (8 chunks a shard). For every case, in the
same run, with zarr's default pipeline and with its fused one (``codec_pipeline.path``:
``BatchedCodecPipeline`` and ``FusedCodecPipeline``, which takes a store's sync path), the
whole array is read through zarr, best of the repeats, the stores taking turns:

- warm RAM tier vs zarr ``MemoryStore`` (throughput ratio, goal >= 0.9);
- warm disk tier (no RAM tier) vs ``LocalStore`` (goal >= 0.9);
- warm RAM tier vs zarr's own ``CacheStore`` (``zarr.experimental``) over the same S3
  array, its cache a ``MemoryStore`` (goal >= 1.0).

For the plain cases, default pipeline, also: warm disk tier vs fsspec ``simplecache::``
warm and vs ``CacheStore`` on a ``LocalStore`` (goal >= 1.0: never slower); the cold read
through the TieredStore (empty tiers) vs raw ``FsspecStore`` (time ratio, goal <= 1.10; the
two alternate, best of the repeats each). And once:

- per-hit latency of a 64 KiB RAM hit through ``get_sync`` (zarr's sync path), in
  microseconds, against the 20 us budget of issue 17 (goal <= 1.0); ``MemoryStore``'s own
  ``get_sync`` of the same bytes is recorded beside it;
- :func:`scan_line`: the RAM tier's hit rate under S3-FIFO vs plain LRU on a hot set read
  beside a repeated scan three times larger than RAM (goal >= 1.3);
- the disk byte bound (:func:`bound_line`): the 1 MiB case read through a disk tier bounded
  at half of what the array takes on S3 (so it must evict); the largest size of the tier's
  directory, sampled every 20 ms, over the bound (goal <= 1.0). An unbounded tier peaks at
  about twice the bound and MISSes (``tests/test_bench_lines.py`` shows it).

Every line goes through ``_results.emit`` into the results file the README tables come from.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import tempfile
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import zarr
from _results import Line, emit
from zarr.experimental.cache_store import CacheStore
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from swarmstore.cache import DiskTier, TieredStore
from swarmstore.cache._disk import disk_usage
from swarmstore.testing import moto_server

MiB = 2**20


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def read_all(store: object) -> np.ndarray:
    return zarr.open_array(store, mode="r")[:]


def dir_size(path: pathlib.Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                total += os.stat(os.path.join(root, fn)).st_size
            except FileNotFoundError:
                pass
    return total


class Sampler:
    """Largest size of a directory seen while the benchmark runs."""

    def __init__(self, path: pathlib.Path, period: float = 0.2) -> None:
        self.path = path
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, disk_usage(self.path))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_usage(self.path))


_SAME = -1


def bound_line(
    backing: object, cache_dir: pathlib.Path, *, bound: int, tier_bytes: int | None = _SAME
) -> Line:
    """Read every chunk of the array at the root of ``backing`` through a disk tier of
    ``tier_bytes`` (default: ``bound``) and compare the directory's largest size with
    ``bound``. ``tier_bytes`` other than ``bound`` is the mutation that shows the line
    can fail (``tier_bytes=None``: an unbounded tier)."""
    tier = DiskTier(cache_dir, max_bytes=bound if tier_bytes == _SAME else tier_bytes, fsync=False)
    store = TieredStore(backing, memory_bytes=0, disk=tier)  # type: ignore[arg-type]
    with Sampler(cache_dir, period=0.02) as size:
        zarr.open_array(store, mode="r")[:]
        store.flush()
    evictions = tier.stats()["evictions"]
    store.close()
    return Line("cache", "disk tier peak size vs its bound (must evict)", ours=size.peak,
                peer=bound, peer_name="the configured bound", unit="bytes", better="lower",
                goal=1.0, extra={"evictions": evictions})  # fmt: skip


PIPELINES = {
    "default pipeline": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "fused pipeline": "zarr.core.codec_pipeline.FusedCodecPipeline",
}
SHARD = 8  # chunks a shard in the sharded layouts


def write(store: object, data: np.ndarray, chunk: int, sharded: bool) -> None:
    shards = (SHARD * chunk,) if sharded else None
    z = zarr.create_array(store, shape=data.shape, chunks=(chunk,), shards=shards, dtype="f4")  # type: ignore[arg-type]
    z[:] = data


def turns(stores: dict[str, object], pipeline: str, repeat: int) -> dict[str, float]:
    """Best time of reading each store whole in ``pipeline``; the stores take turns."""
    out = dict.fromkeys(stores, float("inf"))
    with zarr.config.set({"codec_pipeline.path": PIPELINES[pipeline]}):
        arrays = {k: zarr.open_array(s, mode="r") for k, s in stores.items()}  # type: ignore[arg-type]
        for a in arrays.values():
            a[:]  # each warm in this pipeline (its metadata read once)
        for _ in range(repeat):
            for k, a in arrays.items():
                out[k] = min(out[k], best(lambda a=a: a[:], 1))
    return out


def hit_latency_us(store: object, key: str, n: int, repeat: int) -> float:
    """Microseconds per ``get_sync`` of ``key`` (best of ``repeat`` loops of ``n``), with
    a buffer prototype passed as zarr's pipeline passes one."""
    from zarr.core.buffer import default_buffer_prototype

    get, proto = store.get_sync, default_buffer_prototype()  # type: ignore[attr-defined]
    get(key, prototype=proto)
    return 1e6 * best(lambda: [get(key, prototype=proto) for _ in range(n)], repeat) / n


def latency_line(repeat: int) -> Line:
    """A 64 KiB RAM hit through TieredStore.get_sync against the 20 us budget."""
    from zarr.core.buffer import default_buffer_prototype

    backing = MemoryStore()
    tiered = TieredStore(backing, memory_bytes=64 * MiB, disk=False, sync_io=True)
    tiered.set_sync("c/0", default_buffer_prototype().buffer.from_bytes(os.urandom(64 * 1024)))
    ours = hit_latency_us(tiered, "c/0", 2000, repeat)
    plain = hit_latency_us(backing, "c/0", 2000, repeat)
    hits = tiered.stats()["memory"]["hits"]
    return Line("cache", "per-hit latency of a 64 KiB RAM hit, sync path", ours=ours, peer=20.0,
                peer_name="the 20 us budget (issue 17)", unit="us", better="lower", goal=1.0,
                extra={"memory_store_get_sync_us": plain, "ram_hits": hits})  # fmt: skip


def scan_hit_rate(policy: str, *, steps: int = 20_000, p_hot: float = 0.3) -> float:
    """Hit rate of a read-through RAM tier of 100 values: 50 hot keys read at random
    (``p_hot`` of the reads) beside a scan of 300 keys (3x RAM) repeated over and over."""
    import random

    from swarmstore.cache import Entry, MemoryTier

    value = b"v" * 1000
    tier = MemoryTier(100 * 1200, admission_fraction=1.0, policy=policy)
    rng, pos, hits, reads = random.Random(1), 0, 0, 0
    for step in range(steps):
        if rng.random() < p_hot:
            key = f"hot/{rng.randrange(50)}"
        else:
            key, pos = f"scan/{pos % 300}", pos + 1
        found = tier.get_sync("ns", key, None)
        if step >= steps // 10:
            reads, hits = reads + 1, hits + (found is not None)
        if found is None:
            tier.put_sync("ns", key, None, Entry(value, 0.0), tier.ticket("ns", key))
    return hits / reads


def scan_line(ours: str = "s3fifo") -> Line:
    """The RAM tier's policy (``ours``; the shipped one is S3-FIFO) against plain LRU."""
    return Line("cache", "RAM tier hit rate, hot set beside scans 3x RAM", ours=scan_hit_rate(ours),
                peer=scan_hit_rate("lru"), peer_name="plain LRU", unit="hit rate",
                better="higher", goal=1.3, extra={"policy": ours})  # fmt: skip


def cold(s3: Callable[[], object], tiered_at: Callable[[], TieredStore], data: np.ndarray,
         repeat: int) -> tuple[dict[str, float], TieredStore]:  # fmt: skip
    """Cold reads, raw and through empty tiers, alternating (who goes first alternates
    too), best of ``repeat`` each (one sample of each swung the ratio by +-25% on a shared
    machine); returns the times and the last, now warm, TieredStore."""
    r = {"raw_cold": float("inf"), "tiered_cold": float("inf"), "fill_wait": 0.0}
    tiered = None
    for k in range(repeat):
        if k % 2 == 0:
            r["raw_cold"] = min(r["raw_cold"], best(lambda: read_all(s3()), 1))
        if tiered is not None:
            assert tiered.disk is not None
            tiered.disk.clear()
            tiered.close()
        tiered = tiered_at()
        t0 = time.perf_counter()
        assert np.array_equal(read_all(tiered), data)
        took = time.perf_counter() - t0
        tiered.flush()
        if took < r["tiered_cold"]:
            r["tiered_cold"], r["fill_wait"] = took, time.perf_counter() - t0 - took
        if k % 2 == 1:
            r["raw_cold"] = min(r["raw_cold"], best(lambda: read_all(s3()), 1))
    assert tiered is not None
    return r, tiered


def main() -> int:
    # fresh s3fs filesystems per measurement leave aiohttp sessions for GC, and zarr warns
    # that simplecache is not async: noise, not results
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message=".*was not created with `asynchronous=True`")
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeat = 2 if args.quick else 3
    warm = 5 if args.quick else 7  # warm reads are short: more turns, less noise
    # quick: 32 chunks of 1 MiB, 64 of 64 KiB (moto's time goes by requests, not bytes)
    sizes = [("1MiB", (32 if args.quick else 256) * MiB, MiB),
             ("64KiB", (4 if args.quick else 64) * MiB, 64 * 1024)]  # fmt: skip
    cases = [(f"{n}{', sharded' if sh else ''}", b, c, sh) for n, b, c in sizes for sh in (0, 1)]
    roomy = 4 * sum(nbytes for _, nbytes, _, _ in cases)  # the warm cases never evict
    rng = np.random.default_rng(0)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-cache-"))
    results: dict[str, dict[str, float]] = {}
    with moto_server(process=True) as endpoint:
        bucket = endpoint.make_bucket()
        opts = endpoint.storage_options()

        def s3(name: str) -> FsspecStore:
            return FsspecStore(endpoint.filesystem(asynchronous=True), path=f"{bucket}/{name}")

        for name, nbytes, chunk_bytes, sharded in cases:
            key = name.replace(", ", "-")
            data = rng.random(nbytes // 4, dtype="f4")
            mem_store, local = MemoryStore(), LocalStore(tmp / f"local-{key}")
            for store in (s3(key), mem_store, local):
                write(store, data, chunk_bytes // 4, bool(sharded))
            disk_dir = tmp / f"tier-{key}"

            def tiered_at(key: str = key, disk_dir: pathlib.Path = disk_dir) -> TieredStore:
                disk = DiskTier(disk_dir, max_bytes=roomy)
                return TieredStore(s3(key), memory_bytes=roomy, disk=disk)

            r, tiered = cold(lambda key=key: s3(key), tiered_at, data, repeat if not sharded else 1)
            r["mb"] = nbytes / 1e6
            disk_only = TieredStore(
                s3(key), memory_bytes=0, disk=DiskTier(disk_dir, max_bytes=roomy)
            )
            read_all(disk_only)  # opens the index; reads come from disk
            cs_ram = CacheStore(s3(key), cache_store=MemoryStore(), max_size=roomy)
            read_all(cs_ram)  # warm it
            before = disk_only.stats()["backing"]["reads"]
            stores = {"ram_warm": tiered, "memory_store": mem_store, "disk_warm": disk_only,
                      "local_store": local, "cachestore_ram": cs_ram}  # fmt: skip
            for pipeline in PIPELINES:
                for k, t in turns(stores, pipeline, warm).items():
                    r[f"{pipeline}/{k}"] = t
            r["disk_backing_reads"] = disk_only.stats()["backing"]["reads"] - before
            if not sharded:
                r |= peers_on_disk(s3(key), f"s3://{bucket}/{key}", opts, tmp / key, roomy, repeat)
            results[name] = r
            disk_only.close()
            tiered.close()
        first = cases[0][0]
        stored = endpoint.filesystem().du(f"{bucket}/{first}")
        bound_result = emit(bound_line(s3(first), tmp / "bounded", bound=stored // 2))

    for name, r in results.items():
        report(name, r)
    emit(latency_line(warm + 2))
    emit(scan_line())
    return 0 if bound_tested(bound_result) else 1


def peers_on_disk(
    backing: object, url: str, opts: dict, where: pathlib.Path, roomy: int, repeat: int
) -> dict[str, float]:
    """Warm fsspec simplecache and zarr CacheStore on a LocalStore, default pipeline."""
    sc_dir = where / "simplecache"
    sc_opts = {"s3": opts, "simplecache": {"cache_storage": str(sc_dir)}}
    sc = zarr.open_array(f"simplecache::{url}", mode="r", storage_options=sc_opts)
    sc[:]  # warm it
    cs = CacheStore(backing, cache_store=LocalStore(where / "cs"), max_size=roomy)  # type: ignore[arg-type]
    read_all(cs)  # warm it
    return {
        "simplecache_warm": best(lambda: sc[:], repeat),
        "simplecache_bytes": dir_size(sc_dir),
        "cachestore_disk": best(lambda: read_all(cs), repeat),
    }


def report(name: str, r: dict[str, float]) -> None:
    """The lines of one case: warm RAM and disk against their peers in both pipelines; for
    plain layouts also the disk peers and the cold read."""
    mb = r["mb"]
    for p in PIPELINES:

        def rate(k: str, p: str = p) -> float:
            return mb / r[f"{p}/{k}"]

        emit(Line("cache", f"warm RAM tier vs MemoryStore ({name} chunks, {p})",
                  ours=rate("ram_warm"), peer=rate("memory_store"), peer_name="zarr MemoryStore",
                  unit="MB/s", better="higher", goal=0.9))  # fmt: skip
        emit(Line("cache", f"warm disk tier vs LocalStore ({name} chunks, {p})",
                  ours=rate("disk_warm"), peer=rate("local_store"), peer_name="zarr LocalStore",
                  unit="MB/s", better="higher", goal=0.9,
                  extra={"backing_reads": r["disk_backing_reads"]}))  # fmt: skip
        cs = f"warm RAM tier vs zarr CacheStore on a MemoryStore ({name} chunks, {p})"
        emit(Line("cache", cs,
                  ours=rate("ram_warm"), peer=rate("cachestore_ram"),
                  peer_name="zarr CacheStore (MemoryStore cache)", unit="MB/s", better="higher",
                  goal=1.0))  # fmt: skip
    if "simplecache_warm" not in r:
        return
    disk = mb / r["default pipeline/disk_warm"]
    emit(Line("cache", f"warm disk tier vs simplecache ({name} chunks)", ours=disk,
              peer=mb / r["simplecache_warm"], peer_name="fsspec simplecache (warm)",
              unit="MB/s", better="higher", goal=1.0))  # fmt: skip
    emit(Line("cache", f"warm disk tier vs zarr CacheStore on a LocalStore ({name} chunks)",
              ours=disk, peer=mb / r["cachestore_disk"],
              peer_name="zarr CacheStore (LocalStore cache)", unit="MB/s", better="higher",
              goal=1.0))  # fmt: skip
    emit(Line("cache", f"cold read through the tiers vs raw FsspecStore ({name} chunks)",
              ours=r["tiered_cold"], peer=r["raw_cold"], peer_name="zarr FsspecStore (S3)",
              unit="s", better="lower", goal=1.10,
              extra={"fill_wait_s": r["fill_wait"]}))  # fmt: skip


def bound_tested(line: Line) -> bool:
    """True when the bound line is sound: the run evicted (else it tested nothing)."""
    return bool(line.extra.get("evictions"))


if __name__ == "__main__":
    raise SystemExit(main())
