"""The plain parts of peer reads (issue 21), without a cluster: the Bloom-filter summary,
the owner ring (the same owners as compute's chunk-affinity placement), spans on the
wire, watermarks, and config validation of the peer keys."""

from __future__ import annotations

import dask
import pytest

from swarmstore.cache._coherence import Watermarks
from swarmstore.cache._peer import PeerTier
from swarmstore.cache._peerdir import Directory, ring_identity
from swarmstore.cache._peerserve import PeerServer, span_from_wire, span_to_wire
from swarmstore.cache._peersummary import Summary
from swarmstore.compute.placement import Placer, WorkerInfo
from swarmstore.errors import ConfigError


def test_a_summary_names_every_key_it_was_built_from_in_a_fixed_size():
    keys = [("ns", f"arr/c/{i}/{j}") for i in range(70) for j in range(70)]  # 4900 keys
    s = Summary.of(keys, bits=65536)
    assert all(k in s for k in keys)  # no false negatives
    others = [("ns", f"other/c/{i}") for i in range(2000)]
    false = sum(k in s for k in others)
    assert false < 0.1 * len(others)  # ~3% at this load
    assert len(s.to_bytes()) == 8192  # bounded by config, not by the cache
    back = Summary.from_bytes(s.to_bytes())
    assert all(k in back for k in keys[:100])
    assert ("other-ns", keys[0][1]) not in Summary.of(keys[:1], bits=65536)


def test_a_summary_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not a peer summary"):
        Summary.from_bytes(b"")
    with pytest.raises(ValueError, match="not a peer summary"):
        Summary.from_bytes(12)  # type: ignore[arg-type]


def test_the_owner_ring_is_compute_s_chunk_affinity_ring():
    workers = [("tcp://10.0.0.1:1", "w-a", 2), ("tcp://10.0.0.2:1", "w-b", 1)]
    workers += [("tcp://10.0.0.3:1", "tcp://10.0.0.3:1", 4)]  # named by its address
    placer = Placer()
    listing = []
    for addr, name, n in workers:
        ident = "" if name == addr else f"name:{name}"
        placer.add_worker(WorkerInfo(addr, n, {}, ident))
        listing.append(
            {"address": addr, "identity": ring_identity(name, addr), "nthreads": n, "summary": None}
        )
    d = Directory()
    d.update(listing)
    keys = [f"arr/c/{i}/0" for i in range(300)]
    assert [d.owner(k) for k in keys] == [placer.owner(k) for k in keys]
    assert len({d.owner(k) for k in keys}) == 3


def test_guesses_put_the_owner_first_and_skip_excluded_workers():
    keys = [("ns", f"k{i}") for i in range(50)]
    listing = [
        {"address": f"tcp://w{i}:1", "identity": f"name:w{i}", "nthreads": 1,
         "summary": Summary.of(keys, 4096).to_bytes()}
        for i in range(3)
    ]  # fmt: skip
    d = Directory()
    d.update(listing)
    for ns, key in keys:
        g = d.guesses(ns, key, exclude=set())
        assert g[0] == d.owner(key) and sorted(g) == sorted(w["address"] for w in listing)
        assert d.owner(key) not in d.guesses(ns, key, exclude={d.owner(key)})
    assert d.guesses("ns", "never-cached", exclude=set()) == []


@pytest.mark.parametrize("span", [None, ("r", 0, 10), ("o", 5), ("s", 16)])
def test_spans_survive_the_wire(span):
    wire = span_to_wire(span)
    assert span_from_wire(wire) == span


@pytest.mark.parametrize("bad", [["x", 1], ["r", 1], ["o", 1, 2], "r:0-1", ["r", "0", 1]])
def test_a_malformed_span_is_refused(bad):
    with pytest.raises(ValueError, match="not a span"):
        span_from_wire(bad)


def test_watermarks_cover_only_what_was_applied():
    mine, theirs = Watermarks(), Watermarks()
    theirs.note("a#1", 3)
    assert not mine.covers(theirs.snapshot())
    mine.note("a#1", 2)
    assert not mine.covers(theirs.snapshot())
    mine.note("a#1", 5)
    mine.note("a#1", 4)  # an older number never lowers the mark
    assert mine.covers(theirs.snapshot()) and mine.snapshot() == {"a#1": 5}
    theirs.note("a#2", 0)  # the same address restarted: another writer
    assert not mine.covers(theirs.snapshot())


def test_watermarks_stay_bounded_and_a_forgotten_writer_is_not_covered():
    w = Watermarks(keep=8)
    for i in range(20):
        w.note(f"w{i}#1", i)
    assert len(w.snapshot()) <= 8
    assert not w.covers({"w0#1": 0})  # forgotten: refused, never trusted


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("peer-serve-concurrency", 0),
        ("peer-serve-queue", -1),
        ("peer-summary-bits", 8),
        ("peer-timeout", 0),
        ("peer-quarantine", "soon"),
        ("peer-directory-interval", -1),
        ("peers", "yes please"),
    ],
)
def test_bad_peer_settings_are_refused_naming_the_key(key, bad):
    with dask.config.set({f"swarmstore.cache.{key}": bad}), pytest.raises(ConfigError, match=key):
        PeerServer([], Watermarks())
        PeerTier(None)
        from swarmstore.cache._plugin import peers_wanted

        peers_wanted(None)


def test_a_detached_peer_tier_never_asks():
    import asyncio

    tier = PeerTier(None)
    assert asyncio.run(tier.get("ns", "k", None)) is None
    assert tier.get_sync("ns", "k", None) is None
    assert tier.stats()["asked"] == 0


def _router(**kwargs):
    from swarmstore.network import TransferRouter

    return TransferRouter(probe=False, **kwargs)


def test_the_router_chooses_between_a_peer_and_the_backing_store_by_expected_time():
    from swarmstore.cache._peer import _REMOTE, choose, peer_source, remote_source

    router = _router()
    peer = "tcp://10.0.0.2:1"
    assert choose(router, "ns", [peer]) == peer  # nothing measured: try the peer
    for _ in range(9):  # the backing store is slow, the peer fast (1 MiB reads)
        router.observe(remote_source("ns"), 0.080, 1 << 20)
        router.observe(peer_source(peer), 0.004, 1 << 20)
    assert choose(router, "ns", [peer]) == peer
    other = "tcp://10.0.0.3:1"
    for _ in range(9):  # another peer, slower than the backing store
        router.observe(peer_source(other), 0.5, 1 << 20)
    assert choose(router, "ns", [other]) is _REMOTE
    assert choose(router, "ns", [other, peer]) == peer  # the router's order, not the guess's
    assert choose(router, "ns", []) is None


def test_a_peer_whose_circuit_is_open_is_not_asked():
    from swarmstore.cache._peer import choose, peer_source

    router = _router(circuit_failures=2)
    peer = "tcp://10.0.0.2:1"
    for _ in range(2):
        router.observe(peer_source(peer), 0.1, 0, ok=False)
    assert choose(router, "ns", [peer]) is None


def test_fills_and_promotions_record_the_digest_peers_are_checked_against(tmp_path):
    import xxhash
    from zarr.core.buffer import cpu
    from zarr.storage import LocalStore

    from swarmstore.cache import DiskTier, MemoryTier, TieredStore

    ram, disk = MemoryTier(2**20), DiskTier(tmp_path / "cache")
    store = TieredStore(LocalStore(tmp_path / "data"), tiers=[ram, disk, PeerTier(None)])
    plain = TieredStore(LocalStore(tmp_path / "data"), tiers=[MemoryTier(2**20)])
    data = b"chunk" * 1000
    store.set_sync("k", cpu.Buffer.from_bytes(data))
    try:
        assert store.get_sync("k").to_bytes() == data  # a fill from the backing store
        digest = xxhash.xxh3_64_intdigest(data)
        assert ram.get_sync(store.namespace, "k", None).digest == digest
        disk.flush()
        ram.clear()
        assert store.get_sync("k").to_bytes() == data  # a disk hit, promoted into RAM
        assert ram.get_sync(store.namespace, "k", None).digest == digest
        plain.get_sync("k")  # no peer tier in the chain: no digest taken
        assert plain.memory.get_sync(plain.namespace, "k", None).digest is None
    finally:
        store.close()
