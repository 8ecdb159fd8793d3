"""Erasure-coded keys (issue 20): placement, bytes, degraded reads, more than m losses,
versions that never mix, deletes, repair, rebalance, conversion, export, records."""

from __future__ import annotations

import asyncio
import os
import pathlib

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.errors import ConfigError, FragmentsUnavailable
from swarmstore.storage import (
    Coding,
    NodeSpec,
    NodeWrapper,
    Record,
    ReplicatedStore,
    export,
    node_from,
)
from swarmstore.storage._fragments import fragments_of
from swarmstore.storage._integrity import Fragment

PROTO = default_buffer_prototype()


def _store(tmp_path: pathlib.Path, n: int = 6, coding=None, **kw) -> ReplicatedStore:
    nodes = [f"file://{tmp_path}/n{i}" for i in range(n)]
    kw.setdefault("read_repair", False)
    return ReplicatedStore(
        nodes,
        replicas=3,
        coding={"a/": (4, 2)} if coding is None else coding,
        state_dir=str(tmp_path / "state"),
        create=True,
        **kw,
    )


def _buf(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


def _wipe(node, key: str) -> None:
    os.unlink(pathlib.Path(node.name.removeprefix("file://")) / key)


def _take_down(node) -> None:
    """A file where the node's directory belongs (its directory moved aside): every request
    to the node fails, and a store allowed to create roots cannot recreate it."""
    root = pathlib.Path(node.name.removeprefix("file://"))
    root.rename(root.with_name(root.name + "-away"))
    root.write_bytes(b"")


def _bring_back(node) -> None:
    root = pathlib.Path(node.name.removeprefix("file://"))
    root.unlink()
    root.with_name(root.name + "-away").rename(root)


def _flip(node, key: str) -> None:
    path = pathlib.Path(node.name.removeprefix("file://")) / key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))  # a rewrite keeps the xattr: the record stays, the bytes rot


async def test_fragments_go_to_k_plus_m_distinct_nodes_one_per_zone(tmp_path):
    nodes = [NodeSpec(f"file://{tmp_path}/n{i}", zone=f"z{i % 6}") for i in range(12)]
    store = ReplicatedStore(nodes, replicas=3, coding={"": (4, 2)}, create=True)
    data = os.urandom(100_000)
    await store.set("a/c/0", _buf(data))
    targets = store.targets("a/c/0")
    assert len(targets) == 6 and len({t.zone for t in targets}) == 6
    for i, t in enumerate(targets):
        got = await t.read("a/c/0")
        assert got is not None and got.record.fragment.index == i
        assert got.data != data
    assert (await store.get("a/c/0", PROTO)).to_bytes() == data


async def test_bytes_stored_per_logical_byte_are_k_plus_m_over_k(tmp_path):
    store = _store(tmp_path, n=9, coding={"a/": (4, 2), "b/": (6, 3)})
    data = os.urandom(1 << 20)
    await store.set("a/x", _buf(data))
    await store.set("b/x", _buf(data))
    for key, ratio in (("a/x", 1.5), ("b/x", 1.5)):
        stored = sum(
            (pathlib.Path(n.name.removeprefix("file://")) / key).stat().st_size
            for n in store.targets(key)
        )
        assert stored / len(data) == pytest.approx(ratio, rel=0.02)


async def test_metadata_stays_replicated_and_plain_zarr_cannot_read_coded_chunks(tmp_path):
    store = _store(tmp_path)
    arr = zarr.create_array(store, name="a", shape=(64,), chunks=(16,), dtype="f8")
    arr[:] = np.arange(64.0)
    assert store.coding_for("a/zarr.json") is None and store.coding_for("a/c/0") is not None
    node = store.targets("a/zarr.json")[0].name.removeprefix("file://")
    plain = zarr.open_array(LocalStore(node), path="a", mode="r")  # metadata opens
    assert plain.shape == (64,)
    fragment = (pathlib.Path(node) / "a/c/0").read_bytes()
    chunk = await store.get("a/c/0", PROTO)
    assert fragment != chunk.to_bytes()  # what plain zarr finds there is a fragment
    np.testing.assert_array_equal(zarr.open_array(store, path="a")[:], np.arange(64.0))


@pytest.mark.parametrize("damage", ["wipe", "flip"])
async def test_up_to_m_lost_or_corrupt_fragments_read_right_and_repair_in_background(
    tmp_path, damage
):
    store = _store(tmp_path, read_repair=True)
    data = os.urandom(300_000)
    await store.set("a/k", _buf(data))
    await store.flush()
    targets = store.targets("a/k")
    for node in targets[:2]:
        (_wipe if damage == "wipe" else _flip)(node, "a/k")
    assert (await store.get("a/k", PROTO)).to_bytes() == data
    await store.flush()  # the degraded read's background repair
    report = await store.scrub()
    assert report.ok, report
    assert report.healthy == 6


async def test_a_degraded_read_with_a_node_down_still_decodes(tmp_path):
    store = _store(tmp_path)
    data = os.urandom(50_000)
    await store.set("a/k", _buf(data))
    await store.flush()
    _take_down(store.targets("a/k")[0])
    assert (await store.get("a/k", PROTO)).to_bytes() == data


async def test_more_than_m_bad_fragments_raise_naming_the_key_and_each_fragment(tmp_path):
    store = _store(tmp_path)
    await store.set("a/k", _buf(os.urandom(10_000)))
    await store.flush()  # the write's shadows are dropped
    targets = store.targets("a/k")
    _wipe(targets[0], "a/k")
    _wipe(targets[1], "a/k")
    _flip(targets[2], "a/k")
    with pytest.raises(FragmentsUnavailable, match=r"'a/k'.*RS\(4,2\)") as info:
        await store.get("a/k", PROTO)
    states = info.value.tried
    assert sum(s.startswith("absent") for s in states.values()) == 2
    assert sum(s.startswith("corrupt: ChecksumMismatch") for s in states.values()) == 1
    assert sum(s.startswith("fragment ") for s in states.values()) == 3
    assert "a/k" in (await store.repair()).unrecoverable


async def _killed_writer(store, key: str, new: bytes, commits: int, shadows: bool) -> None:
    """What a writer killed after ``commits`` in-place commits leaves (with its shadows)."""
    from swarmstore.storage._shadows import shadow_body, shadow_name

    targets = store.targets(key)
    got = await targets[0].read(key)
    newer = (got.record.counter + 1, 1)
    pieces = [(f, r.stamped(newer)) for f, r in fragments_of(4, 2, new, 1 << 20)]
    if shadows:
        for node, (frag, rec) in zip(targets, pieces, strict=True):
            await node.meta_put(shadow_name(key), shadow_body(key, frag, rec))
    for node, (frag, rec) in list(zip(targets, pieces, strict=True))[:commits]:
        await node.write(key, frag, rec)


@pytest.mark.parametrize("commits", [0, 1, 2, 3, 4, 5, 6])
async def test_a_writer_killed_after_any_commit_leaves_old_or_new_never_a_mix(tmp_path, commits):
    store = _store(tmp_path)
    old, new = os.urandom(40_000), os.urandom(40_000)
    await store.set("a/k", _buf(old))
    await store.flush()
    await _killed_writer(store, "a/k", new, commits, shadows=True)
    got = (await store.get("a/k", PROTO)).to_bytes()
    assert got == (old if commits <= 2 else new)  # old while it decodes, else the shadows
    assert (await store.repair()).ok
    for node in store.targets("a/k"):
        assert await node.meta_list("s") == [], "repair left the killed writer's shadows"
    assert (await store.get("a/k", PROTO)).to_bytes() in (old, new)
    assert (await store.scrub()).ok


async def test_without_shadows_an_undecodable_mix_raises_never_guesses(tmp_path):
    store = _store(tmp_path)
    await store.set("a/k", _buf(os.urandom(40_000)))
    await store.flush()
    await _killed_writer(store, "a/k", os.urandom(40_000), 3, shadows=False)
    with pytest.raises(FragmentsUnavailable):
        await store.get("a/k", PROTO)


async def test_an_overwrite_and_a_delete_are_never_read_back_stale(tmp_path):
    store = _store(tmp_path)
    for i in range(3):
        value = bytes([i]) * 5000
        await store.set("a/k", _buf(value))
        assert (await store.get("a/k", PROTO)).to_bytes() == value
    await store.delete("a/k")
    assert await store.get("a/k", PROTO) is None
    assert not await store.exists("a/k")
    await store.flush()
    assert (await store.repair()).ok
    assert await store.get("a/k", PROTO) is None


async def test_repair_rebuilds_missing_fragments_from_any_k(tmp_path):
    store = _store(tmp_path)
    data = os.urandom(123_457)
    await store.set("a/k", _buf(data))
    await store.flush()
    targets = store.targets("a/k")
    before = [(await t.read("a/k")).data for t in targets]
    _wipe(targets[1], "a/k")
    _wipe(targets[4], "a/k")
    assert not (await store.scrub()).ok
    report = await store.repair()
    assert report.ok and report.copies_written == 2
    assert [(await t.read("a/k")).data for t in targets] == before


async def test_rebalance_moves_fragments_when_nodes_join(tmp_path):
    small = _store(tmp_path, n=6)
    values = {f"a/k{i}": os.urandom(2000 + i) for i in range(20)}
    for k, v in values.items():
        await small.set(k, _buf(v))
    big = _store(tmp_path, n=9)
    for k, v in values.items():  # readable before the rebalance (fragments on old nodes)
        assert (await big.get(k, PROTO)).to_bytes() == v
    report = await big.rebalance()
    assert report.copied > 0 and not report.failed
    scrub = await big.scrub()
    assert scrub.ok and not scrub.misplaced, scrub
    for k, v in values.items():
        assert (await big.get(k, PROTO)).to_bytes() == v


async def test_conversion_both_ways_is_resumable(tmp_path):
    plain = _store(tmp_path, coding={})
    values = {f"a/k{i}": os.urandom(3000) for i in range(6)}
    for k, v in values.items():
        await plain.set(k, _buf(v))
    coded = _store(tmp_path)
    first = await coded.convert("a/", limit=2)
    assert not first.complete and first.keys == 2
    rest = await coded.convert("a/")
    assert rest.resumed_after is not None and rest.complete and rest.keys == 4
    scrub = await coded.scrub()
    assert scrub.ok and not scrub.misplaced, scrub
    for k, v in values.items():
        assert (await coded.get(k, PROTO)).to_bytes() == v
        for t in coded.targets(k):
            assert (await t.read(k)).record.fragment is not None
    back = await plain.convert("a/")
    assert back.ok
    scrub = await plain.scrub()
    assert scrub.ok and not scrub.misplaced, scrub
    for k, v in values.items():
        assert (await plain.get(k, PROTO)).to_bytes() == v


async def test_a_store_that_does_not_code_a_key_refuses_its_fragments(tmp_path):
    await _store(tmp_path).set("a/k", _buf(b"x" * 1000))
    with pytest.raises(ConfigError, match="erasure-coded"):
        await _store(tmp_path, coding={}).get("a/k", PROTO)


@pytest.mark.parametrize("task", ["repair", "scrub", "rebalance"])
async def test_maintenance_without_the_coding_policy_refuses_and_moves_no_fragment(tmp_path, task):
    """A store opened without its coding policy must not treat a fragment as the value:
    repair would have copied one fragment over the others (each a replica of "the newest
    version") and left fewer than k distinct fragments."""
    coded, value = _store(tmp_path), os.urandom(4000)
    await coded.set("a/k", _buf(value))
    before = {t.name: (await t.read("a/k")).data for t in coded.targets("a/k")}
    with pytest.raises(ConfigError, match="erasure-coded"):
        await getattr(_store(tmp_path, coding={}), task)()
    after = {t.name: (await t.read("a/k")).data for t in coded.targets("a/k")}
    assert after == before
    assert (await coded.get("a/k", PROTO)).to_bytes() == value


async def test_export_writes_a_plain_store_that_plain_zarr_reads(tmp_path):
    store = _store(tmp_path)
    arr = zarr.create_array(store, name="a", shape=(40,), chunks=(8,), dtype="i4")
    arr[:] = np.arange(40)
    copied = await export(store, LocalStore(tmp_path / "plain"))
    assert copied == 7  # two zarr.json and 5 chunks
    np.testing.assert_array_equal(
        zarr.open_array(LocalStore(tmp_path / "plain"), path="a")[:], np.arange(40)
    )


async def test_a_write_at_a_lower_quorum_leaves_hints_that_rebuild_the_fragment(tmp_path):
    store = _store(tmp_path, coding={"a/": Coding(4, 2, write_quorum=5)})
    await store.set("a/other", _buf(b"makes the roots"))
    down = store.targets("a/k")[5]
    _take_down(down)
    data = os.urandom(20_000)
    await store.set("a/k", _buf(data))  # 5 of 6 fragments
    await store.flush()
    assert store.hints.has(down.name, "a/k")
    _bring_back(down)
    assert await store.replay_hints() >= 1
    assert (await store.scrub()).ok
    assert (await store.get("a/k", PROTO)).to_bytes() == data


class CountingNode(NodeWrapper):
    """Counts the fragment reads that reach the node (async and in-thread)."""

    reads = 0

    async def read(self, key, start=0, end=None):
        CountingNode.reads += 1
        return await self.inner.read(key, start, end)

    def read_now(self, key, start=0, end=None):
        CountingNode.reads += 1
        return self.inner.read_now(key, start, end)


@pytest.mark.parametrize("sync", [True, False])
async def test_a_healthy_read_fetches_k_fragments(tmp_path, sync):
    nodes = [CountingNode(node_from(f"file://{tmp_path}/n{i}")) for i in range(6)]
    for n in nodes:
        n.supports_sync = sync
    store = ReplicatedStore(nodes, coding="4+2", create=True, read_repair=False)
    await store.set("a/k", _buf(os.urandom(8000)))
    CountingNode.reads = 0
    await store.get("a/k", PROTO)
    assert 4 <= CountingNode.reads <= 5  # k, plus at most one hedge


async def test_a_degraded_read_on_sync_nodes_asks_each_node_once_in_one_hop(tmp_path, monkeypatch):
    """Two fragments wiped (m = 2): the read takes the two nodes after the first k in the
    same thread hop, and the wiped nodes' tombstones too, rather than one async request
    per missing fragment and then a tombstone pass (bench: 2-down reads went 0.35x to
    0.5-0.6x of healthy ones)."""
    nodes = [CountingNode(node_from(f"file://{tmp_path}/n{i}")) for i in range(6)]
    store = ReplicatedStore(nodes, coding="4+2", create=True, read_repair=False)
    data = os.urandom(40_000)
    await store.set("a/k", _buf(data))
    await store.get("a/k", PROTO)  # the store is open, its router has measured the nodes
    await store.flush()  # the write's background work (dropping its shadows) is done
    for node in store.router.order(store.targets("a/k"), lambda n: n.name)[:2]:
        _wipe(node.inner, "a/k")  # two of the first k the read asks
    hops = []
    real = asyncio.to_thread
    monkeypatch.setattr(asyncio, "to_thread", lambda fn, *a: hops.append(fn) or real(fn, *a))
    CountingNode.reads = 0
    assert (await store.get("a/k", PROTO)).to_bytes() == data
    assert CountingNode.reads == 6  # k + the 2 the wiped ones stand for
    assert len(hops) == 1, [getattr(h, "__qualname__", h) for h in hops]


def test_fragment_records_round_trip_and_old_records_still_read():
    frag = Fragment(3, 4, 2, 1000, 0xDEADBEEF, "isa_l_rs_cauchy")
    rec = Record.of(b"abc" * 100, 64, (5, 7))
    coded = Record(rec.size, rec.block, rec.hashes, 5, 7, fragment=frag)
    assert Record.decode(coded.encode("k"), "k") == coded
    assert Record.decode(rec.encode("k"), "k") == rec and rec.fragment is None
    text = coded.encode("k").replace(":4:2:1000:", ":4:3:1000:")
    with pytest.raises(ValueError):
        Record.decode(text, "k")
    assert not rec.same_content(coded)


def test_bad_codings_are_refused():
    for bad in [(0, 2), (4, 0), (30, 3), "4-2", (4, 2, 4), (4, 2, 7)]:
        with pytest.raises(ConfigError):
            Coding.parse(bad)
    with pytest.raises(ConfigError, match="needs 6 nodes"):
        ReplicatedStore([f"memory://few-{i}" for i in range(5)], coding="4+2")


def test_the_sync_methods_take_the_coded_path(tmp_path):
    store = _store(tmp_path)
    store.set_sync("r/k", _buf(b"replicated"))  # opens the store: the in-thread path is on
    assert store.get_sync("r/k").to_bytes() == b"replicated"
    data = os.urandom(70_000)
    store.set_sync("a/k", _buf(data))
    assert store.get_sync("a/k").to_bytes() == data
    sizes = [
        (pathlib.Path(n.name.removeprefix("file://")) / "a/k").stat().st_size
        for n in store.targets("a/k")
    ]
    assert len(sizes) == 6 and max(sizes) < 20_000  # fragments, not whole copies
    store.delete_sync("a/k")
    assert store.get_sync("a/k") is None


def test_the_coding_comes_from_config_validated_and_survives_pickling(tmp_path):
    import pickle

    import dask.config

    nodes = [f"memory://cfg-{tmp_path.name}-{i}" for i in range(6)]
    with dask.config.set({"swarmstore.storage.coding": {"a/": "4+2"}}):
        store = ReplicatedStore(nodes, state_dir=str(tmp_path / "s"))
    assert store.coding_for("a/x") == Coding(4, 2) and store.coding_for("b/x") is None
    copy = pickle.loads(pickle.dumps(store))
    assert copy.coding_for("a/x") == Coding(4, 2) and copy == store
    assert store != ReplicatedStore(nodes, state_dir=str(tmp_path / "s"), coding={})
    with dask.config.set({"swarmstore.storage.coding": {"a/": "4-2"}}):
        with pytest.raises(ConfigError, match="k\\+m"):
            ReplicatedStore(nodes, state_dir=str(tmp_path / "s"))


async def test_a_local_shadow_is_a_link_of_the_staged_fragment_and_reads_back_whole(tmp_path):
    """A coded write parks each staged fragment as its shadow by a hard link (a file
    create costs a local disk ~20x a link): one inode, the header in an xattr; it reads
    back as the shadow body, and dropping it leaves nothing on the fragment."""
    from swarmstore.storage._localdir import SHADOW_XATTR
    from swarmstore.storage._shadows import parse_shadow, put_shadows, shadow_name

    store = _store(tmp_path)
    await store.set("a/other", _buf(b"makes the roots"))
    key, node = "a/k", store.targets("a/k")[0]
    (data, record), *_ = fragments_of(4, 2, os.urandom(40_000), store.min_block)
    pending = await node.prepare(key, data)
    parked, lost = await put_shadows(store, key, {node: (pending, record.stamped((7, 1)))})
    assert parked == [node] and not lost
    root = pathlib.Path(node.name.removeprefix("file://"))
    shadow = root / ".swarmstore" / shadow_name(key)
    assert shadow.stat().st_ino == os.stat(pending.token).st_ino  # a link, not a copy
    got = parse_shadow(key, await node.meta_get(shadow_name(key)))
    assert got is not None and got.data == data and got.record.version == (7, 1)
    await node.commit(pending, record.stamped((7, 1)))
    assert (root / key).stat().st_ino == shadow.stat().st_ino
    await node.meta_delete(shadow_name(key))
    assert not shadow.exists()
    assert SHADOW_XATTR not in os.listxattr(root / key)  # the fragment keeps no header
    await store.aclose()


async def test_parking_a_shadow_survives_the_area_going_away_meanwhile(tmp_path, monkeypatch):
    """Found on a saturated run: another write's shadow drop removed the empty metadata
    area between this one's mkdir and link (``FileExistsError`` from a racing mkdir), and
    the write failed one of its 6 acknowledgements. Parking retries, as meta puts do."""
    from swarmstore.storage._shadows import parse_shadow, put_shadows, shadow_name

    store = _store(tmp_path)
    await store.set("a/other", _buf(b"makes the roots"))
    key, node = "a/k", store.targets("a/k")[0]
    (data, record), *_ = fragments_of(4, 2, os.urandom(10_000), store.min_block)
    pending = await node.prepare(key, data)
    real, raced = pathlib.Path.mkdir, []

    def mkdir(self, *a, **kw):
        if self.name == "s" and not raced:
            raced.append(self)
            raise FileExistsError(17, "raced", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    parked, lost = await put_shadows(store, key, {node: (pending, record.stamped((3, 1)))})
    assert raced and parked == [node] and not lost
    got = parse_shadow(key, await node.meta_get(shadow_name(key)))
    assert got is not None and got.data == data
    await node.abort(pending)
    await store.aclose()
