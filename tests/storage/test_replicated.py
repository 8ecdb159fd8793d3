"""ReplicatedStore behaviour: placement, verification, failover, repair, hints, bad input."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.errors import ConfigError, InvalidKeyError, QuorumError, ReplicaUnavailable
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()


def buf(data: bytes):
    return PROTO.buffer.from_bytes(data)


def make(tmp_path: pathlib.Path, n: int = 3, replicas: int = 2, **kwargs):
    faults = [Faults() for _ in range(n)]
    nodes = [
        FaultyStore(LocalStore(tmp_path / f"node{i}"), faults[i], name=f"node{i}") for i in range(n)
    ]
    store = ReplicatedStore(nodes, replicas=replicas, state_dir=tmp_path / "state", **kwargs)
    return store, faults


def flip_at_rest(path: pathlib.Path, offset: int | None = None) -> None:
    """Corrupt a file in place, keeping its checksum xattr (bit rot)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(bytes(data))


async def test_every_node_holds_exactly_zarrs_bytes_and_opens_with_plain_zarr(tmp_path):
    store, _ = make(tmp_path, n=3, replicas=3)
    data = np.arange(40 * 40, dtype="f4").reshape(40, 40)
    group = await zarr.api.asynchronous.open_group(store=store, mode="w")
    arr = await group.create_array("x", shape=data.shape, chunks=(10, 10), dtype="f4")
    await arr.setitem(slice(None), data)
    for i in range(3):
        plain = zarr.open_group(LocalStore(tmp_path / f"node{i}"), mode="r")
        assert [name for name, _ in plain.members()] == ["x"]  # no stray entries, no warnings
        np.testing.assert_array_equal(plain["x"][:], data)
    key = "x/c/1/2"
    reference = (await store.get(key, PROTO)).to_bytes()
    for i in range(3):
        assert (tmp_path / f"node{i}" / key).read_bytes() == reference


async def test_corrupt_replica_is_never_returned_and_is_repaired(tmp_path):
    store, _ = make(tmp_path)
    await store.set("k", buf(b"hello world" * 100))
    first, second = store.targets("k")
    flip_at_rest(first.root / "k")
    for _ in range(20):  # make the router prefer the corrupt replica
        store.router.observe(first.name, 0.0001, 1000)
        store.router.observe(second.name, 0.5, 1000)
    for _ in range(3):
        got = await store.get("k", PROTO)
        assert got.to_bytes() == b"hello world" * 100
    await store.flush()
    assert (first.root / "k").read_bytes() == b"hello world" * 100  # read repair


async def test_all_replicas_corrupt_raises_naming_key_and_nodes(tmp_path):
    store, _ = make(tmp_path)
    await store.set("a/b", buf(b"x" * 64))
    for node in store.targets("a/b"):
        flip_at_rest(node.root / "a/b")
    with pytest.raises(ReplicaUnavailable) as info:
        await store.get("a/b", PROTO)
    assert info.value.key == "a/b"
    for node in store.targets("a/b"):
        assert "checksum" in info.value.tried[node.name]
    assert set(info.value.tried) == {n.name for n in store.targets("a/b")}


async def test_injected_in_flight_corruption_fails_over(tmp_path):
    store, faults = make(tmp_path)
    await store.set("k", buf(b"payload"))
    for f in faults:
        f.corrupt_reads.add("k")
    with pytest.raises(ReplicaUnavailable):
        await store.get("k", PROTO)
    faults[int(store.targets("k")[1].name[-1])].corrupt_reads.clear()
    assert (await store.get("k", PROTO)).to_bytes() == b"payload"


async def test_reads_fail_over_when_a_node_is_down(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=2)
    values = {f"k{i}": os.urandom(100) for i in range(30)}
    for k, v in values.items():
        await store.set(k, buf(v))
    for down in range(3):
        faults[down].down = True
        for k, v in values.items():
            assert (await store.get(k, PROTO)).to_bytes() == v
        faults[down].down = False


async def test_r_minus_one_nodes_wiped_everything_still_readable(tmp_path):
    store, _ = make(tmp_path, n=4, replicas=3)
    data = np.random.default_rng(0).random((64, 64))
    arr = await zarr.api.asynchronous.create_array(
        store, shape=data.shape, chunks=(8, 8), dtype="f8"
    )
    await arr.setitem(slice(None), data)
    for i in (0, 2):  # the disks were replaced: empty, but mounted
        shutil.rmtree(tmp_path / f"node{i}")
        (tmp_path / f"node{i}").mkdir()
    arr2 = await zarr.api.asynchronous.open_array(store=store, mode="r")
    np.testing.assert_array_equal(await arr2.getitem(slice(None)), data)
    report = await store.repair()
    assert report.ok and report.copies_written > 0
    assert (await store.scrub()).ok


async def test_a_missing_node_root_is_an_outage_never_recreated(tmp_path):
    """Issue 14: a deleted node directory (an unmounted disk) is reported unreachable by
    scrub and repair, which go on with the other nodes; nothing recreates it."""
    store, _ = make(tmp_path, n=3, replicas=2)
    for i in range(10):
        await store.set(f"k{i}", buf(b"v"))
    shutil.rmtree(tmp_path / "node1")
    urls = [NodeSpec(f"file://{tmp_path}/node{i}", name=f"node{i}") for i in range(3)]
    again = ReplicatedStore(urls, replicas=2, state_dir=tmp_path / "state2")
    scrubbed = await again.scrub()
    assert scrubbed.unreachable == ["node1"] and not scrubbed.ok
    fixed = await again.repair()
    assert fixed.unreachable == ["node1"] and not fixed.ok
    assert not (tmp_path / "node1").exists()
    for i in range(10):  # one of two replicas left: still readable (Rq = 1)
        assert (await again.get(f"k{i}", PROTO)).to_bytes() == b"v"
    key = next(f"k{i}" for i in range(10) if "node1" in {n.name for n in store.targets(f"k{i}")})
    with pytest.raises(QuorumError):
        await again.set(key, buf(b"w"))
    assert not (tmp_path / "node1").exists()
    fresh = ReplicatedStore(urls, replicas=2, state_dir=tmp_path / "s3", create=True)
    await fresh.set(key, buf(b"w"))  # explicit: create=True makes the root again
    assert (tmp_path / "node1").is_dir()


async def test_write_with_a_node_down_leaves_a_hint_replayed_on_return(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=3, write_quorum=2)
    await store.set("k", buf(b"v1"))
    faults[0].down = True
    await store.set("k", buf(b"v2"))  # 2 of 3 acks: succeeds, hint for node0
    assert store.hints.has("node0", "k")
    faults[0].down = False
    # node0 still holds v1 on disk, but it is never read for "k" while the hint is pending
    assert (tmp_path / "node0" / "k").read_bytes() == b"v1"
    for _ in range(5):
        assert (await store.get("k", PROTO)).to_bytes() == b"v2"
    replayed = await store.replay_hints()
    assert replayed == 1 and not store.hints.has("node0", "k")
    assert (tmp_path / "node0" / "k").read_bytes() == b"v2"


async def test_hints_survive_a_restart_of_the_coordinator(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=3, write_quorum=2)
    faults[1].down = True
    await store.set("k", buf(b"v"))
    await store.delete("k")  # node1 misses the delete too
    faults[1].down = False
    reopened = ReplicatedStore(
        store.nodes, replicas=3, write_quorum=2, state_dir=tmp_path / "state"
    )
    assert set(reopened.hints.pending("node1")) == {"k"}
    assert await reopened.replay_hints() == 1
    assert not (tmp_path / "node1" / "k").exists()


async def test_failed_quorum_changes_nothing(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=3, write_quorum=2)
    await store.set("k", buf(b"old"))
    faults[0].down = faults[1].down = True
    with pytest.raises(QuorumError, match="1 of 2"):
        await store.set("k", buf(b"new"))
    faults[0].down = faults[1].down = False
    for i in range(3):
        assert (tmp_path / f"node{i}" / "k").read_bytes() == b"old"
        assert not [p for p in os.listdir(tmp_path / f"node{i}") if "swarm-tmp" in p]
    assert (await store.get("k", PROTO)).to_bytes() == b"old"


async def test_quorum_error_is_an_oserror_and_writes_refuse_read_only(tmp_path):
    store, faults = make(tmp_path, n=2, replicas=2)
    faults[0].fail_writes = faults[1].fail_writes = True
    with pytest.raises(OSError):
        await store.set("k", buf(b"x"))
    ro = store.with_read_only(True)
    with pytest.raises(ValueError, match="read-only"):
        await ro.set("k", buf(b"x"))


@pytest.mark.parametrize(
    "key", ["../escape", "/abs/key", "a/../b", "a\\b", "a\x00b", "", "a//b", "./a"]
)
async def test_keys_that_escape_a_node_are_refused(tmp_path, key):
    store, _ = make(tmp_path)
    with pytest.raises(InvalidKeyError):
        await store.set(key, buf(b"x"))
    with pytest.raises(InvalidKeyError):
        await store.get(key, PROTO)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    ("nodes", "kwargs", "match"),
    [
        ([], {}, "non-empty"),
        (["file:///tmp/a"], {"replicas": 2}, "replicas=2"),
        (["file:///tmp/a", "file:///tmp/a"], {"replicas": 1}, "unique"),
        (["ftp://host/x"], {"replicas": 1}, "unsupported scheme"),
        (["relative/path"], {"replicas": 1}, "absolute"),
        (["s3://"], {"replicas": 1}, "bucket"),
        (["memory://"], {"replicas": 1}, "name"),
        ([object()], {"replicas": 1}, "cannot use"),
        (["file:///tmp/a", "file:///tmp/b"], {"replicas": 2, "write_quorum": 3}, "write_quorum"),
    ],
)
def test_bad_configuration_is_refused(nodes, kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        ReplicatedStore(nodes, state_dir=tmp_path, **kwargs)


async def test_partial_reads_are_verified_per_block(tmp_path):
    store, _ = make(tmp_path, n=2, replicas=2, min_block=1024)
    payload = os.urandom(10_000)
    await store.set("big", buf(payload))
    cases = [
        RangeByteRequest(100, 200),
        RangeByteRequest(1024, 4096),
        OffsetByteRequest(9000),
        SuffixByteRequest(50),
        RangeByteRequest(9990, 20_000),
    ]
    for req in cases:
        got = await store.get("big", PROTO, byte_range=req)
        start = getattr(
            req, "start", getattr(req, "offset", len(payload) - getattr(req, "suffix", 0))
        )
        end = min(getattr(req, "end", len(payload)), len(payload))
        assert got.to_bytes() == payload[start:end]
    # rot block 5 on both replicas: ranges elsewhere still verify, ranges over it fail loudly
    for node in store.targets("big"):
        flip_at_rest(node.root / "big", offset=5 * 1024 + 3)
    assert (await store.get("big", PROTO, RangeByteRequest(0, 1000))).to_bytes() == payload[:1000]
    with pytest.raises(ReplicaUnavailable):
        await store.get("big", PROTO, RangeByteRequest(5000, 5200))
    with pytest.raises(ReplicaUnavailable):
        await store.get("big", PROTO)


async def test_sharded_array_reads_through_get_ranges(tmp_path):
    store, _ = make(tmp_path, n=3, replicas=2, min_block=4096)
    data = np.arange(128 * 128, dtype="i4").reshape(128, 128)
    arr = await zarr.api.asynchronous.create_array(
        store, shape=data.shape, chunks=(16, 16), shards=(64, 64), dtype="i4"
    )
    await arr.setitem(slice(None), data)
    np.testing.assert_array_equal(
        await arr.getitem((slice(3, 20), slice(70, 90))), data[3:20, 70:90]
    )
    np.testing.assert_array_equal(await arr.getitem(slice(None)), data)


async def test_listing_is_the_union_without_duplicates(tmp_path):
    store, faults = make(tmp_path, n=4, replicas=2)
    keys = {f"g/a{i}/c/{j}" for i in range(3) for j in range(5)} | {"g/zarr.json"}
    for k in keys:
        await store.set(k, buf(b"1"))
    listed = [k async for k in store.list()]
    assert sorted(listed) == sorted(keys)
    faults[1].down = True
    assert sorted([k async for k in store.list_prefix("g/a1/")]) == sorted(
        k for k in keys if k.startswith("g/a1/")
    )
    assert sorted([k async for k in store.list_dir("g")]) == ["a0", "a1", "a2", "zarr.json"]


async def test_absent_key_with_one_node_down_reads_as_absent(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=2)
    faults[0].down = True
    assert await store.get("never-written", PROTO) is None
    assert not await store.exists("never-written")


async def test_scrub_repair_report_and_restore(tmp_path):
    store, _ = make(tmp_path, n=3, replicas=2)
    for i in range(20):
        await store.set(f"k{i}", buf(os.urandom(256)))
    victim = store.targets("k3")[0]
    flip_at_rest(victim.root / "k3")
    gone = store.targets("k7")[1]
    (gone.root / "k7").unlink()
    seen = []
    report = await store.scrub(progress=lambda done, total: seen.append((done, total)))
    assert not report.ok
    assert report.corrupt == [("k3", victim.name)]
    assert report.missing == [("k7", gone.name)]
    assert report.keys == 20 and seen[-1] == (20, 20)
    fixed = await store.repair()
    assert fixed.copies_written == 2 and not fixed.unrecoverable
    assert (await store.scrub()).ok


async def test_repair_adopts_values_written_behind_its_back(tmp_path):
    store, _ = make(tmp_path, n=2, replicas=2)
    for i in range(2):
        (tmp_path / f"node{i}").mkdir(exist_ok=True)
        (tmp_path / f"node{i}" / "plain").write_bytes(b"written by plain zarr")
    assert (await store.get("plain", PROTO)).to_bytes() == b"written by plain zarr"
    report = await store.scrub()
    assert len(report.unrecorded) == 2
    fixed = await store.repair()
    assert fixed.adopted == 1
    assert (await store.scrub()).ok and not (await store.scrub()).unrecorded


async def test_rebalance_after_adding_a_node_is_resumable(tmp_path):
    store, _ = make(tmp_path, n=3, replicas=2)
    keys = [f"k{i:03d}" for i in range(150)]
    for k in keys:
        await store.set(k, buf(k.encode()))
    (tmp_path / "node3").mkdir()  # a new disk, mounted: its root exists
    grown = ReplicatedStore(
        [*store.nodes, LocalStore(tmp_path / "node3")], replicas=2, state_dir=tmp_path / "state"
    )
    moving = [k for k in keys if grown.targets(k) != store.targets(k)]
    assert 0.2 * len(keys) < len(moving) < 0.8 * len(keys)  # ~R/N of the keys gain the new node
    for k in keys:  # readable before any data moved
        assert (await grown.get(k, PROTO)).to_bytes() == k.encode()
    first = await grown.rebalance(limit=70)
    assert not first.complete and first.keys == 70
    second = await grown.rebalance()
    assert second.complete and second.resumed_after == keys[69]
    assert first.keys + second.keys == 150
    report = await grown.scrub()
    assert report.ok and not report.misplaced
    new_node = tmp_path / "node3"
    assert sum(1 for k in keys if (new_node / k).exists()) == sum(
        1 for k in keys if grown.nodes[3] in grown.targets(k)
    )


async def test_zones_and_weights_shape_placement(tmp_path):
    specs = [
        NodeSpec(f"file://{tmp_path}/a1", zone="a"),
        NodeSpec(f"file://{tmp_path}/a2", zone="a"),
        NodeSpec(f"file://{tmp_path}/b1", zone="b", weight=2.0),
    ]
    store = ReplicatedStore(specs, replicas=2, state_dir=tmp_path / "state")
    for i in range(200):
        assert {n.zone for n in store.targets(f"k{i}")} == {"a", "b"}


async def test_memory_nodes_share_by_name_and_pickle(tmp_path):
    import pickle

    store = ReplicatedStore(["memory://pk-a", "memory://pk-b"], replicas=2, state_dir=tmp_path)
    await store.set("k", buf(b"v"))
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store
    assert (await clone.get("k", PROTO)).to_bytes() == b"v"


async def test_cache_token_follows_the_value(tmp_path):
    store, _ = make(tmp_path)
    assert await store.cache_token("k") is None
    await store.set("k", buf(b"aaaa"))
    first = await store.cache_token("k")
    await store.set("k", buf(b"bbbb"))  # same size, new bytes
    second = await store.cache_token("k")
    assert first and second and first != second


@pytest.mark.parametrize("backend", ["local", "memory"])
async def test_set_if_not_exists_racing_writers_exactly_one_wins(tmp_path, backend):
    if backend == "local":
        urls = [f"file://{tmp_path}/r{i}" for i in range(3)]
    else:
        urls = [f"memory://race-{tmp_path.name}-{i}" for i in range(3)]
    writers = [ReplicatedStore(urls, replicas=3, state_dir=tmp_path / f"s{i}") for i in range(8)]
    values = [f"writer-{i}".encode() for i in range(8)]
    for round_ in range(5):
        key = f"manifest-{round_}"
        await asyncio.gather(
            *(w.set_if_not_exists(key, buf(v)) for w, v in zip(writers, values, strict=True))
        )
        for w in writers:
            await w.replay_hints()
        held = set()
        for node in writers[0].nodes:
            got = await node.read(key)
            assert got is not None
            held.add(got[0])
        assert len(held) == 1 and held <= set(values)  # one winner, on every replica
        winner = held.pop()
        for w in writers:
            assert (await w.get(key, PROTO)).to_bytes() == winner


async def test_set_if_not_exists_keeps_an_existing_value_and_needs_quorum(tmp_path):
    store, faults = make(tmp_path, n=3, replicas=3, write_quorum=2)
    await store.set("k", buf(b"first"))
    await store.set_if_not_exists("k", buf(b"second"))
    assert (await store.get("k", PROTO)).to_bytes() == b"first"
    faults[0].down = faults[1].down = True
    with pytest.raises(QuorumError):
        await store.set_if_not_exists("new", buf(b"x"))
    faults[0].down = faults[1].down = False
    assert await store.get("new", PROTO) is None  # the lone creation was taken back
