"""TieredStore behaviour: hits per tier, single flight, partial reads, writes, staleness, faults."""

from __future__ import annotations

import asyncio
import os
import pathlib
import warnings
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore

from swarmstore.cache import DiskTier, TieredStore
from swarmstore.errors import CacheWarning, NodeUnavailable
from swarmstore.testing import Faults, FaultyStore, flip_byte

proto = default_buffer_prototype()


def buf(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


def backing_gets(store: FaultyStore) -> int:
    return store.faults.counts.get("get", 0)


@pytest.fixture
def faulty(tmp_path: pathlib.Path) -> FaultyStore:
    return FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")


@pytest.fixture
def disk(tmp_path: pathlib.Path) -> DiskTier:
    tier = DiskTier(tmp_path / "cache", max_bytes=2**24, fsync=False)
    yield tier
    tier.close()


def make_array(store: Any, shape: int = 1000, chunks: int = 100, **kwargs: Any) -> zarr.Array:
    z = zarr.create_array(store, shape=(shape,), chunks=(chunks,), dtype="f8", **kwargs)
    z[:] = np.arange(shape, dtype="f8")
    return z


def test_second_read_hits_ram(faulty: FaultyStore) -> None:
    store = TieredStore(faulty, memory_bytes=2**22, disk=False)
    make_array(store)
    z = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(z[:], np.arange(1000))
    before = backing_gets(faulty)
    np.testing.assert_array_equal(z[:], np.arange(1000))
    assert backing_gets(faulty) == before
    stats = store.stats()
    assert stats["memory"]["hits"] >= 10
    assert stats["memory"]["bytes"] > 0
    assert set(stats["memory"]) >= {"hits", "misses", "bytes", "evictions"}


def test_disk_tier_serves_a_fresh_process(faulty: FaultyStore, disk: DiskTier) -> None:
    first = TieredStore(faulty, memory_bytes=2**22, disk=disk)
    make_array(first)
    zarr.open_array(first, mode="r")[:]
    first.flush()
    # a second store (as in a restarted process): empty RAM, same directory, new index handle
    second = TieredStore(faulty, memory_bytes=2**22, disk=DiskTier(disk.path, max_bytes=2**24))
    z = zarr.open_array(second, mode="r")  # probes for absent v2 keys: not cached on disk
    before = backing_gets(faulty)
    np.testing.assert_array_equal(z[:], np.arange(1000))
    assert backing_gets(faulty) == before
    assert second.stats()["disk"]["hits"] >= 10
    second.close()


def test_lost_index_is_rebuilt_from_files(faulty: FaultyStore, disk: DiskTier) -> None:
    store = TieredStore(faulty, memory_bytes=0, disk=disk)
    make_array(store)
    zarr.open_array(store, mode="r")[:]
    store.flush()
    used = disk.stats()["bytes"]
    disk.close()
    for f in disk.path.glob("index.sqlite3*"):
        f.unlink()
    reopened = DiskTier(disk.path, max_bytes=2**24)
    assert reopened.stats()["bytes"] == used
    store2 = TieredStore(faulty, memory_bytes=0, disk=reopened)
    z = zarr.open_array(store2, mode="r")
    before = backing_gets(faulty)
    z[:]
    assert backing_gets(faulty) == before
    reopened.close()


def test_disk_bound_holds_and_shrinks_on_open(faulty: FaultyStore, tmp_path: pathlib.Path) -> None:
    bound = 1_000_000  # files, temp files and the index together
    tier = DiskTier(tmp_path / "small", max_bytes=bound, fsync=False)
    for i in range(50):
        assert tier.write("ns", f"k{i}", None, bytes([i]) * 40_000)
        assert tier.disk_usage() <= bound
    stats = tier.stats()
    assert stats["bytes"] <= bound and stats["evictions"] > 20
    assert tier.read("ns", "k49", None).data == bytes([49]) * 40_000  # newest kept
    assert tier.read("ns", "k0", None) is None  # oldest gone
    tier.close()
    smaller = DiskTier(tmp_path / "small", max_bytes=bound // 4)
    assert smaller.stats()["bytes"] <= bound // 4 and smaller.disk_usage() <= bound // 4
    assert smaller.write("ns", "huge", None, b"x" * bound) is False
    smaller.close()


def test_ram_admission_keeps_huge_values_out(faulty: FaultyStore) -> None:
    store = TieredStore(faulty, memory_bytes=100_000, disk=False)
    asyncio.run(faulty.set("small", buf(b"s" * 1000)))
    asyncio.run(faulty.set("huge", buf(b"h" * 60_000)))
    asyncio.run(store.get("small", proto))
    asyncio.run(store.get("huge", proto))
    stats = store.stats()["memory"]
    assert stats["rejected"] == 1 and stats["entries"] == 1


def test_ram_evicts_least_recently_used(faulty: FaultyStore) -> None:
    store = TieredStore(faulty, memory_bytes=10_000, disk=False, admission_fraction=1.0)

    async def go() -> None:
        for i in range(5):
            await faulty.set(f"k{i}", buf(bytes([i]) * 2400))
        for i in range(5):
            await store.get(f"k{i}", proto)

    asyncio.run(go())
    stats = store.stats()["memory"]
    assert stats["bytes"] <= 10_000 and stats["evictions"] >= 1


async def test_single_flight(faulty: FaultyStore) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=False)
    await faulty.set("c/0", buf(b"payload"))
    faulty.faults.latency = 0.2
    before = backing_gets(faulty)
    results = await asyncio.gather(*(store.get("c/0", proto) for _ in range(20)))
    assert all(r.to_bytes() == b"payload" for r in results)
    assert backing_gets(faulty) - before == 1
    assert store.stats()["backing"]["coalesced"] == 19


async def test_cancelled_leader_does_not_fail_followers(faulty: FaultyStore) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=False)
    await faulty.set("c/0", buf(b"payload"))
    faulty.faults.latency = 0.2
    leader = asyncio.ensure_future(store.get("c/0", proto))
    await asyncio.sleep(0.05)
    follower = asyncio.ensure_future(store.get("c/0", proto))
    await asyncio.sleep(0.05)
    leader.cancel()
    assert (await follower).to_bytes() == b"payload"


def test_sharded_array_read_twice_hits_cache(faulty: FaultyStore, disk: DiskTier) -> None:
    store = TieredStore(faulty, memory_bytes=2**22, disk=disk)
    make_array(store, shape=4000, chunks=100, shards=(1000,))
    z = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(z[150:2750], np.arange(150, 2750))
    before = backing_gets(faulty)
    np.testing.assert_array_equal(z[150:2750], np.arange(150, 2750))
    assert backing_gets(faulty) == before
    store.flush()
    # and from disk alone, in a store with no RAM tier
    cold = TieredStore(faulty, memory_bytes=0, disk=disk)
    z = zarr.open_array(cold, mode="r")
    before = backing_gets(faulty)
    np.testing.assert_array_equal(z[150:2750], np.arange(150, 2750))
    assert backing_gets(faulty) == before


async def test_get_ranges_and_byte_ranges_served_from_tiers(
    faulty: FaultyStore, disk: DiskTier
) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=disk)
    data = bytes(range(256)) * 16
    await faulty.set("shard", buf(data))
    ranges = [RangeByteRequest(10, 20), RangeByteRequest(3000, 3100), SuffixByteRequest(16)]

    async def read() -> dict[int, bytes]:
        out = {}
        async for group in store.get_ranges("shard", ranges, prototype=proto):
            out.update({i: b.to_bytes() for i, b in group})
        return out

    first = await read()
    assert first == {0: data[10:20], 1: data[3000:3100], 2: data[-16:]}
    store.flush()
    before = backing_gets(faulty)
    assert await read() == first
    assert backing_gets(faulty) == before
    # the disk tier alone answers too (a new store: empty RAM)
    cold = TieredStore(faulty, memory_bytes=0, disk=disk)
    assert (await cold.get("shard", proto, SuffixByteRequest(16))).to_bytes() == data[-16:]
    assert backing_gets(faulty) == before
    # once the whole value is cached, any range is a hit
    await store.get("shard", proto)
    before = backing_gets(faulty)
    got = await store.get("shard", proto, RangeByteRequest(7, 4000))
    assert got.to_bytes() == data[7:4000] and backing_gets(faulty) == before


async def test_writes_and_deletes_are_never_served_stale(
    faulty: FaultyStore, disk: DiskTier
) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=disk)
    assert await store.get("k", proto) is None  # remembered as absent...
    store.flush()
    await store.set("k", buf(b"one"))  # ...until written
    assert (await store.get("k", proto)).to_bytes() == b"one"
    assert (await store.get("k", proto, RangeByteRequest(0, 2))).to_bytes() == b"on"
    store.flush()
    await store.set("k", buf(b"two"))
    assert (await store.get("k", proto)).to_bytes() == b"two"
    assert (await store.get("k", proto, RangeByteRequest(0, 2))).to_bytes() == b"tw"
    await store.delete("k")
    assert await store.get("k", proto) is None
    await store.set("d/a", buf(b"a"))
    await store.get("d/a", proto)
    await store.delete_dir("d")
    assert await store.get("d/a", proto) is None
    store.flush()
    on_disk = disk.read(store.namespace, "k", None)
    assert on_disk is None or on_disk.data is None  # gone, or remembered as absent


async def test_write_during_slow_read_is_not_overwritten_by_it(
    faulty: FaultyStore, disk: DiskTier
) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=disk)
    await faulty.set("k", buf(b"old"))
    faulty.faults.latency = 0.3
    slow = asyncio.ensure_future(store.get("k", proto))  # reads "old" slowly
    await asyncio.sleep(0.05)
    faulty.faults.latency = 0.0
    await store.set("k", buf(b"new"))
    assert (await store.get("k", proto)).to_bytes() == b"new"
    await slow
    store.flush()
    assert (await store.get("k", proto)).to_bytes() == b"new"
    fresh = TieredStore(faulty, memory_bytes=0, disk=disk)
    assert (await fresh.get("k", proto)).to_bytes() == b"new"


async def test_other_writers_seen_after_ttl_or_with_validation(tmp_path: pathlib.Path) -> None:
    other = LocalStore(tmp_path / "data")  # another process writing the backing store
    await other.set("k", buf(b"v1"))
    plain = TieredStore(LocalStore(tmp_path / "data"), memory_bytes=2**20, disk=False)
    ttl = TieredStore(LocalStore(tmp_path / "data"), memory_bytes=2**20, disk=False, ttl=0.2)
    checked = TieredStore(
        LocalStore(tmp_path / "data"), memory_bytes=2**20, disk=False, validate=True
    )
    for s in (plain, ttl, checked):
        assert (await s.get("k", proto)).to_bytes() == b"v1"
    await asyncio.sleep(0.01)
    await other.set("k", buf(b"v2"))
    assert (await plain.get("k", proto)).to_bytes() == b"v1"  # documented: trusted forever
    assert (await checked.get("k", proto)).to_bytes() == b"v2"
    assert (await checked.get("k", proto)).to_bytes() == b"v2"
    await asyncio.sleep(0.25)
    assert (await ttl.get("k", proto)).to_bytes() == b"v2"


async def test_validation_against_s3_etag(s3_store: Any, tmp_path: pathlib.Path) -> None:
    checked = TieredStore(s3_store, memory_bytes=2**20, disk=tmp_path / "c", validate=True)
    await s3_store.set("k", buf(b"v1"))
    assert (await checked.get("k", proto)).to_bytes() == b"v1"
    await s3_store.set("k", buf(b"v2"))  # same size: only the ETag tells
    assert (await checked.get("k", proto)).to_bytes() == b"v2"
    checked.close()


async def test_a_fill_waited_for_is_revalidated_before_it_is_served(
    tmp_path: pathlib.Path,
) -> None:
    """validate=True: a reader that waited on another fetcher's claim (another process, or
    this one's own slow fill) revalidates what that fetcher left on disk; it had been served
    as is, so a fill from before a write came back after the write (CI, issue 12)."""
    writer = LocalStore(tmp_path / "data")
    await writer.set("k", buf(b"v1"))
    checked = TieredStore(
        LocalStore(tmp_path / "data"), memory_bytes=2**20, disk=tmp_path / "c", validate=True
    )
    assert (await checked.get("k", proto)).to_bytes() == b"v1"
    checked.flush()  # v1 is on disk, stamped with v1's token
    await writer.set("k", buf(b"v2"))
    path = tmp_path / "data" / "k"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new token however coarse
    holder = DiskTier(tmp_path / "c", fsync=False)  # another fetcher of the key
    claim, waited = holder.claim_sync(checked.namespace, "k", None)
    assert claim is not None and not waited
    release = asyncio.get_running_loop().call_later(0.2, claim.release)
    try:
        assert (await checked.get("k", proto)).to_bytes() == b"v2"
    finally:
        release.cancel()
        claim.release()
        holder.close()
        checked.close()


async def test_corrupt_cache_file_is_refetched_never_returned(
    faulty: FaultyStore, disk: DiskTier
) -> None:
    store = TieredStore(faulty, memory_bytes=0, disk=disk)
    await faulty.set("k", buf(b"A" * 5000))
    await store.get("k", proto)
    store.flush()
    files = [p for p in (disk.path / "data").rglob("*") if p.is_file()]
    assert len(files) == 1
    files[0].write_bytes(flip_byte(files[0].read_bytes(), -10))
    before = backing_gets(faulty)
    assert (await store.get("k", proto)).to_bytes() == b"A" * 5000
    assert backing_gets(faulty) == before + 1
    assert disk.stats()["corrupt"] == 1
    store.flush()
    assert disk.read(store.namespace, "k", None).data == b"A" * 5000  # rewritten whole


async def test_backing_down_serves_cached_keys_only(faulty: FaultyStore, disk: DiskTier) -> None:
    store = TieredStore(faulty, memory_bytes=2**20, disk=disk, ttl=0.05)
    await faulty.set("cached", buf(b"c"))
    await faulty.set("other", buf(b"o"))
    await store.get("cached", proto)
    faulty.faults.down = True
    await asyncio.sleep(0.1)  # past the TTL: the stale copy is still better than nothing
    assert (await store.get("cached", proto)).to_bytes() == b"c"
    with pytest.raises(NodeUnavailable, match="down"):
        await store.get("other", proto)


async def test_backing_down_and_no_token_serves_the_stale_copy(tmp_path: pathlib.Path) -> None:
    class Flaky(MemoryStore):
        down = False

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            if self.down:
                raise ConnectionResetError("peer reset")
            return await super().get(key, prototype, byte_range)

        async def cache_token(self, key: str) -> str | None:
            if self.down:
                raise ConnectionResetError("peer reset")
            return "v1"

    backing = Flaky()
    await backing.set("k", buf(b"c"))
    store = TieredStore(backing, memory_bytes=2**20, disk=False, ttl=0.05)
    assert (await store.get("k", proto)).to_bytes() == b"c"
    backing.down = True
    await asyncio.sleep(0.1)  # past the TTL: revalidation fails, the copy is still served
    assert (await store.get("k", proto)).to_bytes() == b"c"
    assert store.stats()["backing"]["stale_served"] == 1


async def test_backing_oserror_becomes_clear_error(tmp_path: pathlib.Path) -> None:
    class Broken(MemoryStore):
        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            raise ConnectionResetError("peer reset")

    store = TieredStore(Broken(), memory_bytes=2**20, disk=False)
    with pytest.raises(NodeUnavailable, match=r"'k': it is not cached.*peer reset"):
        await store.get("k", proto)


def test_cache_dir_deleted_underneath(faulty: FaultyStore, disk: DiskTier) -> None:
    import shutil

    store = TieredStore(faulty, memory_bytes=0, disk=disk)
    make_array(store)
    zarr.open_array(store, mode="r")[:]
    store.flush()
    shutil.rmtree(disk.path)
    with pytest.warns(CacheWarning, match="removed"):
        np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], np.arange(1000))
        store.flush()
    assert (disk.path / "index.sqlite3").exists()
    z = zarr.open_array(store, mode="r")
    before = backing_gets(faulty)
    z[:]
    assert backing_gets(faulty) == before  # refilled, serving again


async def test_failed_disk_invalidation_disables_the_disk_tier(
    faulty: FaultyStore, disk: DiskTier
) -> None:
    store = TieredStore(faulty, memory_bytes=0, disk=disk)
    await store.set("k", buf(b"old"))
    await store.get("k", proto)
    store.flush()
    disk.close()
    for f in disk.path.glob("index.sqlite3*"):
        f.unlink()
    (disk.path / "index.sqlite3").mkdir()  # the index can no longer be opened
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await store.set("k", buf(b"new"))
    assert any(
        issubclass(w.category, CacheWarning)
        and ("tier is disabled" in str(w.message) or "bypassed" in str(w.message))
        for w in caught
    ), [str(w.message) for w in caught]
    assert (await store.get("k", proto)).to_bytes() == b"new"
    assert (await TieredStore(faulty, memory_bytes=0, disk=False).get("k", proto)) is not None


def test_sharded_array_over_s3_read_twice_hits_cache(s3_store: Any, tmp_path: pathlib.Path) -> None:
    store = TieredStore(s3_store, memory_bytes=2**22, disk=DiskTier(tmp_path / "c", fsync=False))
    make_array(store, shape=2000, chunks=100, shards=(1000,))
    z = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(z[50:1950], np.arange(50, 1950))
    reads = store.stats()["backing"]["reads"]
    np.testing.assert_array_equal(z[50:1950], np.arange(50, 1950))
    assert store.stats()["backing"]["reads"] == reads
    store.close()


def test_over_replicated_store(tmp_path: pathlib.Path) -> None:
    storage = pytest.importorskip("swarmstore.storage")
    nodes = [LocalStore(tmp_path / n) for n in ("a", "b", "c")]
    replicated = storage.ReplicatedStore(nodes, replicas=2, state_dir=tmp_path / "state")
    store = TieredStore(replicated, memory_bytes=2**22, disk=DiskTier(tmp_path / "c"))
    make_array(store)
    z = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(z[:], np.arange(1000))
    reads = store.stats()["backing"]["reads"]
    np.testing.assert_array_equal(z[:], np.arange(1000))
    assert store.stats()["backing"]["reads"] == reads
    z2 = zarr.open_array(store, mode="r+")
    z2[:100] = -1
    np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:100], -np.ones(100))
    store.close()


async def test_flush_waits_for_a_replicated_backing_store(tmp_path):
    """Regression: ReplicatedStore.flush is async; TieredStore.flush must await it."""
    import warnings

    from swarmstore.storage import ReplicatedStore

    backing = ReplicatedStore(
        [f"file://{tmp_path}/n{i}" for i in range(2)], replicas=2, state_dir=tmp_path / "s"
    )
    tiered = TieredStore(backing, memory_bytes=2**20)
    await tiered.set("k", default_buffer_prototype().buffer.from_bytes(b"v"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await asyncio.to_thread(tiered.flush)
