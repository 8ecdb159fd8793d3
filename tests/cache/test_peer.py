"""Peer-cache reads (issue 21) on real in-process Dask clusters: a miss in one worker's tiers
is served by the worker whose cache holds the key, over Dask's comms; bad bytes, a peer
behind an invalidation, a wrong guess and a full serving lane each cost one attempt and
never change a result. Counted, never timed: backing reads, peer hits, what each peer served.

The backing store is a local directory behind zarr's ``LatencyStore`` (500 ms a read), so
the router, which ranks a peer against the backing store by expected time, has a remote
that is clearly slower than a peer one hop away on the same machine.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest
from distributed import Worker, get_worker
from distributed.security import Security
from distributed.utils_test import gen_cluster
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore
from zarr.testing.store import LatencyStore

from swarmstore.cache import TieredCachePlugin, worker_cache
from swarmstore.cache._peerserve import METRIC
from swarmstore.cache._peersummary import Summary
from swarmstore.cache._tier import Entry
from swarmstore.network import reset_default_router

KEYS = [f"c/{i}" for i in range(6)]
#: a saturated machine may take seconds for one answer: behaviour is what these tests count,
#: so neither the first listing nor a peer attempt is cut here (test_peer_frozen cuts one)
CONFIG = {
    "swarmstore.cache.peer-directory-interval": "50ms",
    "swarmstore.cache.peer-timeout": "30s",
    "swarmstore.network.deadline-floor": "30s",
}
CLUSTER: dict[str, Any] = {
    "client": True,
    "nthreads": [("127.0.0.1", 1)] * 3,
    "clean_kwargs": {"threads": False},  # zarr's I/O loop outlives every test
    "config": CONFIG,
}


def value(key: str, gen: int = 0) -> bytes:
    return f"{key}:{gen}:".encode() * 2000


def backing_of(tmp: pathlib.Path) -> LatencyStore:
    return LatencyStore(LocalStore(tmp), get_latency=0.5)


async def seed(backing: LatencyStore) -> None:
    for key in KEYS:
        await backing.set(key, cpu.Buffer.from_bytes(value(key)))


def read(backing: Any, keys: list[str], *deps: object, sync_path: bool = False) -> list[bytes]:
    store = worker_cache(backing)
    out = []
    for key in keys:
        got = store.get_sync(key) if sync_path else sync(store.get(key, default_buffer_prototype()))
        out.append(got.to_bytes())
    return out


def write(backing: Any, key: str, data: bytes) -> None:
    sync(worker_cache(backing).set(key, cpu.Buffer.from_bytes(data)))


def figures(backing: Any) -> dict[str, Any]:
    """This worker's backing reads for ``backing``, and its peer and serving figures."""
    registry = get_worker().plugins["swarmstore-cache"].registry
    store = registry.get(backing)
    return {
        "reads": store.stats()["backing"]["reads"],
        "peer": registry.peer.stats(),
        "serve": registry.server.stats(),
    }


async def summarised(s: Any, worker: Worker, keys: list[str], ns: str) -> None:
    """Wait until the scheduler holds a summary of ``worker`` that names every key."""

    def ready() -> bool:
        raw = (s.workers[worker.address].metrics or {}).get(METRIC)
        return raw is not None and all((ns, k) in Summary.from_bytes(raw) for k in keys)

    for _ in range(3000):
        if ready():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no summary of the peer's cache reached the scheduler")


@pytest.fixture(autouse=True)
def fresh_router():
    """Each test's workers share a process router built under the test's config, and
    leave none behind for the next test."""
    reset_default_router()
    yield
    reset_default_router()


async def setup(c: Any, tmp: pathlib.Path) -> tuple[LatencyStore, str]:
    reset_default_router()  # built again, inside gen_cluster's config
    backing = backing_of(tmp)
    await seed(backing)
    await c.register_plugin(TieredCachePlugin(memory_bytes="64MiB", disk_dir=None))
    ns = await c.submit(lambda b: worker_cache(b).namespace, backing, pure=False)
    return backing, ns


async def warm(c: Any, s: Any, backing: Any, ns: str, worker: Worker, keys: list[str]) -> None:
    await c.submit(read, backing, keys, workers=[worker.address], pure=False)
    await summarised(s, worker, keys, ns)


@pytest.mark.parametrize("sync_path", [False, True])
def test_a_miss_is_served_by_the_peer_that_holds_it(tmp_path: pathlib.Path, sync_path: bool):
    @gen_cluster(**CLUSTER)
    async def run(c, s, a, b, w3):
        backing, ns = await setup(c, tmp_path)
        await warm(c, s, backing, ns, a, KEYS)
        got = await c.submit(read, backing, KEYS, workers=[b.address], sync_path=sync_path)
        assert got == [value(k) for k in KEYS]
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        fa = await c.submit(figures, backing, workers=[a.address], pure=False)
        assert fb["reads"] == 0  # not one read of the backing store on b
        assert fb["peer"]["hits"] == len(KEYS) and fb["peer"]["failures"] == 0
        assert fa["serve"]["served"] == len(KEYS)
        assert fa["reads"] == len(KEYS)
        again = await c.submit(figures, backing, workers=[b.address], pure=False)
        await c.submit(read, backing, KEYS, workers=[b.address], pure=False)
        after = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert after["peer"]["asked"] == again["peer"]["asked"]  # now in b's own RAM

    run()


def corrupt(backing: Any, key: str) -> None:
    """Flip the bytes a worker's RAM tier holds for ``key`` (its recorded digest stays)."""
    registry = get_worker().plugins["swarmstore-cache"].registry
    ns = registry.get(backing).namespace
    memory = registry.memory
    with memory._lock:
        entry = memory._map.get((ns, key, None))
        bad = bytes(x ^ 0xFF for x in entry.data[:8]) + bytes(entry.data[8:])
        memory._map.put((ns, key, None), Entry(bad, entry.filled_at, None, entry.digest), 1)


@gen_cluster(**CLUSTER)
async def test_a_peer_serving_bad_bytes_is_refused_and_quarantined(c, s, a, b, w3):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS)
        await c.submit(corrupt, backing, KEYS[0], workers=[a.address], pure=False)
        got = await c.submit(read, backing, KEYS[:1], workers=[b.address], pure=False)
        assert got == [value(KEYS[0])]  # the backing store's bytes, not the peer's
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fb["peer"]["corrupt"] == 1 and fb["peer"]["quarantined"] == 1
        assert fb["reads"] == 1
        await c.submit(read, backing, KEYS[1:], workers=[b.address], pure=False)
        fb2 = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fb2["peer"]["asked"] == fb["peer"]["asked"]  # a is not asked again
        assert fb2["reads"] == len(KEYS)


def know_invalidation(writer: str, seq: int) -> None:
    get_worker().plugins["swarmstore-cache"].registry.watermarks.note(writer, seq)


@gen_cluster(**CLUSTER)
async def test_a_peer_behind_an_invalidation_the_reader_knows_is_refused(c, s, a, b, w3):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS)
        # b has applied writer x's invalidation 7; a has not (yet)
        await c.submit(know_invalidation, "tcp://x:1#1", 7, workers=[b.address], pure=False)
        got = await c.submit(read, backing, KEYS[:2], workers=[b.address], pure=False)
        assert got == [value(k) for k in KEYS[:2]]
        fa = await c.submit(figures, backing, workers=[a.address], pure=False)
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fa["serve"]["behind"] == 2 and fa["serve"]["served"] == 0
        assert fb["reads"] == 2 and fb["peer"]["misses"] == 2
        await c.submit(know_invalidation, "tcp://x:1#1", 7, workers=[a.address], pure=False)
        await c.submit(read, backing, KEYS[2:4], workers=[b.address], pure=False)
        fa = await c.submit(figures, backing, workers=[a.address], pure=False)
        assert fa["serve"]["served"] == 2  # caught up: served


@gen_cluster(**CLUSTER)
async def test_a_dependent_read_through_a_peer_never_sees_an_old_value(c, s, a, b, w3):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        stale = 0
        for i in range(6):
            key = KEYS[i % 2]
            await warm(c, s, backing, ns, a, [key])  # a caches the current value
            new = value(key, i + 1)
            done = c.submit(write, backing, key, new, workers=[w3.address], pure=False)
            got = await c.submit(read, backing, [key], done, workers=[b.address], pure=False)
            stale += got != [new]
        assert stale == 0


def drop_ram(backing: Any) -> None:
    get_worker().plugins["swarmstore-cache"].registry.memory.clear()


@gen_cluster(**CLUSTER)
async def test_a_wrong_guess_costs_one_peer_attempt(c, s, a, b, w3):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS[:1])
        await c.submit(drop_ram, backing, workers=[a.address], pure=False)  # summary is stale
        got = await c.submit(read, backing, KEYS[:1], workers=[b.address], pure=False)
        assert got == [value(KEYS[0])]
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fb["peer"]["asked"] == 1 and fb["peer"]["misses"] == 1 and fb["reads"] == 1
        fa = await c.submit(figures, backing, workers=[a.address], pure=False)
        assert fa["serve"]["misses"] == 1


@gen_cluster(
    **{
        **CLUSTER,
        "config": {
            **CONFIG,
            "swarmstore.cache.peer-serve-concurrency": 1,
            "swarmstore.cache.peer-serve-queue": 0,
        },
    }
)
async def test_a_full_serving_lane_answers_busy_and_the_reader_reads_remote(c, s, a, b, w3):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS)
        lanes = a.plugins["swarmstore-cache"].registry.server.lanes
        await lanes.acquire("interactive")  # a's one serving slot is taken
        try:
            got = await c.submit(read, backing, KEYS[:2], workers=[b.address], pure=False)
        finally:
            lanes.release("interactive")
        assert got == [value(k) for k in KEYS[:2]]
        fa = await c.submit(figures, backing, workers=[a.address], pure=False)
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fa["serve"]["busy"] == 2 and fa["serve"]["served"] == 0
        assert fb["reads"] == 2


@gen_cluster(**{**CLUSTER, "nthreads": [("127.0.0.1", 1)] * 2})
async def test_after_a_scale_up_moved_chunks_are_read_from_their_old_owners(c, s, a, b):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS[:3])
        await warm(c, s, backing, ns, b, KEYS[3:])
        async with Worker(s.address, nthreads=1, name="joined") as new:
            await c.wait_for_workers(3)
            got = await c.submit(read, backing, KEYS, workers=[new.address], pure=False)
            assert got == [value(k) for k in KEYS]
            fn = await c.submit(figures, backing, workers=[new.address], pure=False)
            peer = fn["peer"]
            # every chunk was guessed at its old owner; a read goes to S3 only where the
            # router, timing both, ranked S3 first (in one process the workers share one
            # router, so the new worker inherits the old ones' S3 figures): on an idle
            # machine that is never, on a saturated one it may be
            assert peer["unguessed"] == 0 and peer["failures"] == 0, fn
            assert fn["reads"] == peer["remote_first"] and peer["hits"] >= 1, fn
            assert peer["hits"] + peer["remote_first"] == len(KEYS), fn


@gen_cluster(**CLUSTER)
async def test_reads_from_the_client_are_served_by_the_workers_caches(c, s, a, b, w3):
    import tempfile

    from swarmstore.cache import MemoryTier, PeerTier, TieredStore

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS[:3])
        await warm(c, s, backing, ns, b, KEYS[3:])
        peer = PeerTier.of_client(c, interval="50ms")
        store = TieredStore(backing, tiers=[MemoryTier(2**24), peer], namespace=ns)
        got = [(await store.get(k, default_buffer_prototype())).to_bytes() for k in KEYS]
        assert got == [value(k) for k in KEYS]
        assert store.stats()["backing"]["reads"] == 0
        assert peer.stats()["hits"] == len(KEYS)


@gen_cluster(
    client=True,
    scheduler="tls://127.0.0.1",
    security=Security.temporary(),  # require_encryption: plain TCP is refused
    nthreads=[("tls://127.0.0.1", 1)] * 2,
    clean_kwargs={"threads": False},
    config=CONFIG,
)
async def test_peer_reads_follow_the_cluster_s_tls(c, s, a, b):
    import tempfile

    assert a.address.startswith("tls://")  # plain TCP is refused on this cluster
    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS)
        got = await c.submit(read, backing, KEYS, workers=[b.address], pure=False)
        assert got == [value(k) for k in KEYS]
        fb = await c.submit(figures, backing, workers=[b.address], pure=False)
        assert fb["reads"] == 0 and fb["peer"]["hits"] == len(KEYS)


@gen_cluster(**CLUSTER)
async def test_a_listing_sends_only_the_summaries_a_reader_lacks(c, s, a, b, w3):
    import tempfile

    from swarmstore.cache import PeerDirectory
    from swarmstore.cache._peerdir import Directory

    with tempfile.TemporaryDirectory() as tmp:
        backing, ns = await setup(c, pathlib.Path(tmp))
        await warm(c, s, backing, ns, a, KEYS)
        plugin = s.plugins[PeerDirectory.name]
        first = plugin.listing()
        assert all(w["summary"] is not None and not w["same"] for w in first)
        d = Directory()
        d.update(first)
        again = plugin.listing(known=d.digests)  # nothing changed in between
        assert all(w["same"] and w["summary"] is None for w in again)
        d.update(again)  # the summaries held are kept
        assert all(d.guesses(ns, k, exclude=set()) == [a.address] for k in KEYS)


def read_in(cls: str, backing: Any, keys: list[str], sync_path: bool) -> list[bytes]:
    from swarmstore.network import qos

    with qos(cls):
        return read(backing, keys, sync_path=sync_path)


@pytest.mark.parametrize("sync_path", [False, True])
def test_peer_reads_keep_their_qos_class_in_the_serving_lane(sync_path: bool):
    config = {
        **CONFIG,
        "swarmstore.cache.peer-serve-concurrency": 4,
        "swarmstore.cache.peer-serve-queue": 0,
    }

    @gen_cluster(**{**CLUSTER, "config": config})
    async def run(c, s, a, b, w3):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            backing, ns = await setup(c, pathlib.Path(tmp))
            await warm(c, s, backing, ns, a, KEYS)
            lanes = a.plugins["swarmstore-cache"].registry.server.lanes
            held = 0
            while lanes.try_acquire("bulk"):  # bulk takes what it may; the reserves stay
                held += 1
            assert 0 < held < 4
            try:
                bulk = c.submit(read_in, "bulk", backing, KEYS[:1], sync_path, workers=[b.address])
                await bulk
                inter = c.submit(read_in, "interactive", backing, KEYS[1:2], sync_path,
                                 workers=[b.address])  # fmt: skip
                await inter
            finally:
                for _ in range(held):
                    lanes.release("bulk")
            fa = await c.submit(figures, backing, workers=[a.address], pure=False)
            fb = await c.submit(figures, backing, workers=[b.address], pure=False)
            assert fa["serve"]["busy"] == 1 and fa["serve"]["served"] == 1
            assert fb["reads"] == 1 and fb["peer"]["hits"] == 1  # bulk went remote

    run()
