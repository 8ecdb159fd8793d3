"""Regressions for the fault campaign (issue 11): one test per defect, on local nodes."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil

import pytest
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.errors import InvalidKeyError, QuorumError
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.storage._local import XATTR
from swarmstore.testing import Faults, FaultyStore, flip_byte

PROTO = default_buffer_prototype()


def buf(data: bytes):
    return PROTO.buffer.from_bytes(data)


def make(tmp_path: pathlib.Path, n: int = 3, replicas: int = 3, state: str = "state", **kw):
    faults = [Faults() for _ in range(n)]
    nodes = [
        FaultyStore(LocalStore(tmp_path / f"node{i}"), faults[i], name=f"node{i}") for i in range(n)
    ]
    return ReplicatedStore(nodes, replicas=replicas, state_dir=tmp_path / state, **kw), faults


def foreign(tmp_path: pathlib.Path, n: int = 3, replicas: int = 3, **kw) -> ReplicatedStore:
    """Another process's store: fresh node objects, its own state dir, its own writer id."""
    specs = [NodeSpec(f"file://{tmp_path}/node{i}", name=f"node{i}") for i in range(n)]
    state = tmp_path / f"foreign-{os.urandom(4).hex()}"
    return ReplicatedStore(specs, replicas=replicas, state_dir=state, **kw)


def prefer(store: ReplicatedStore, name: str) -> ReplicatedStore:
    """Make the store's router try ``name`` first (it measured it fastest)."""
    for _ in range(20):
        for node in store.nodes:
            store.router.observe(node.name, 0.0001 if node.name == name else 0.5, 1000)
    return store


def on_disk(tmp_path: pathlib.Path, i: int, key: str) -> bytes | None:
    path = tmp_path / f"node{i}" / key
    return path.read_bytes() if path.is_file() else None


async def test_a_write_whose_every_commit_fails_keeps_the_old_value(tmp_path):
    """Item 1: every commit fails; get, a reopened store, a foreign one and repair all
    still see v1, and no hint turns into a delete."""
    store, faults = make(tmp_path, n=2, replicas=2)
    await store.set("k", buf(b"v1"))
    for f in faults:
        f.fail_commits = True
    with pytest.raises(QuorumError):
        await store.set("k", buf(b"v2"))
    for f in faults:
        f.fail_commits = False
    assert (await store.get("k", PROTO)).to_bytes() == b"v1"
    reopened, _ = make(tmp_path, n=2, replicas=2)  # same state dir
    assert (await reopened.get("k", PROTO)).to_bytes() == b"v1"
    await reopened.replay_hints()
    report = await foreign(tmp_path, n=2, replicas=2).repair()
    assert report.ok, report
    assert on_disk(tmp_path, 0, "k") == on_disk(tmp_path, 1, "k") == b"v1"


async def test_repair_from_another_process_never_resurrects_a_delete(tmp_path):
    """Item 2: node2 is down during an acknowledged delete and comes back with the old
    file; a repair by a fresh process (its own state dir) keeps the key deleted."""
    store, faults = make(tmp_path, replicas=3, write_quorum=2)
    await store.set("k", buf(b"old"))
    faults[2].down = True
    await store.delete("k")
    faults[2].down = False
    assert on_disk(tmp_path, 2, "k") == b"old"
    other = foreign(tmp_path, write_quorum=2)
    scrubbed = await other.scrub()
    assert ("k", "node2") in scrubbed.stale and not scrubbed.ok  # older than the tombstone
    report = await other.repair()
    assert report.ok and report.hints_replayed == 1, report  # the hint left on node0/1
    assert await other.get("k", PROTO) is None
    assert all(on_disk(tmp_path, i, "k") is None for i in range(3))
    assert not any((tmp_path / f"node{i}" / ".swarmstore").exists() for i in range(3))
    assert await foreign(tmp_path, write_quorum=2).get("k", PROTO) is None


async def test_a_node_that_refuses_writes_keeps_a_delete_from_coming_back(tmp_path):
    """Item 2, same coordinator: node2 reads fine but refuses writes during the delete and
    the repair; the key stays deleted and repair reports the copy it could not fix."""
    store, faults = make(tmp_path, replicas=3, write_quorum=2)
    await store.set("k", buf(b"old"))
    faults[2].fail_writes = True
    await store.delete("k")
    report = await store.repair()
    assert not report.ok and [(k, n) for k, n, _ in report.failed] == [("k", "node2")]
    for first in range(3):
        assert await store.get("k", PROTO) is None, first
    faults[2].fail_writes = False
    assert (await store.repair()).ok
    assert on_disk(tmp_path, 2, "k") is None


async def test_swapped_files_are_corrupt_replicas_never_served(tmp_path):
    """Item 3: a/x and a/y trade places on one node: readers get each key's own bytes,
    scrub calls the swapped ones corrupt (not the good ones stale), repair restores."""
    store, _ = make(tmp_path, replicas=3)
    await store.set("a/x", buf(b"x-bytes" * 10))
    await store.set("a/y", buf(b"y-bytes" * 10))
    node = tmp_path / "node1"
    os.rename(node / "a/x", node / "tmp")
    os.rename(node / "a/y", node / "a/x")
    os.rename(node / "tmp", node / "a/y")
    report = await foreign(tmp_path).scrub()
    assert sorted(report.corrupt) == [("a/x", "node1"), ("a/y", "node1")] and not report.stale
    for _ in range(6):
        assert (await foreign(tmp_path).get("a/x", PROTO)).to_bytes() == b"x-bytes" * 10
    assert (await foreign(tmp_path).repair()).ok
    assert on_disk(tmp_path, 1, "a/x") == b"x-bytes" * 10


async def test_flush_after_a_read_repair_returns(tmp_path):
    """Item 4: flush after a read that spawned a repair returns (it used to spin: the
    repair task was done, its done-callback not yet run, and gather completed eagerly)."""
    labels = [f"memory://flush-{tmp_path.name}-{i}" for i in range(2)]
    store = ReplicatedStore(labels, replicas=2, state_dir=tmp_path / "state")
    await store.set("k", buf(b"v"))
    store.nodes[0].store._store_dict.pop("k")
    assert (await store.get("k", PROTO)).to_bytes() == b"v"
    await asyncio.sleep(0)
    await asyncio.wait_for(store.flush(), 5)
    await asyncio.wait_for(store.replay_hints(), 5)
    await asyncio.wait_for(store.aclose(), 5)


def _set_counter(path: pathlib.Path, key: str, delta: int) -> None:
    text = os.getxattr(path, XATTR).decode()
    parts = text.split(":")
    parts[2] = str(int(parts[2]) + delta)
    os.setxattr(path, XATTR, ":".join(parts).encode())


async def test_a_flipped_version_field_is_corrupt_never_newest(tmp_path):
    """Item 5: node2 misses a write and its stale record's counter gains 2**40; a repair
    by another process keeps the new value. A flip on a current replica is corrupt (not
    "stale forever") and repair rewrites it."""
    store, faults = make(tmp_path, replicas=3, write_quorum=2)
    await store.set("k", buf(b"old"))
    faults[2].down = True
    await store.set("k", buf(b"new"))
    faults[2].down = False
    _set_counter(tmp_path / "node2" / "k", "k", 2**40)
    assert (await foreign(tmp_path, write_quorum=2).repair()).ok
    assert all(on_disk(tmp_path, i, "k") == b"new" for i in range(3))
    _set_counter(tmp_path / "node0" / "k", "k", 1 << 3)
    report = await foreign(tmp_path, write_quorum=2).scrub()
    assert report.corrupt == [("k", "node0")] and not report.stale
    assert (await foreign(tmp_path, write_quorum=2).repair()).ok
    assert (await foreign(tmp_path, write_quorum=2).scrub()).ok


async def test_suffix_reads_check_the_size_against_the_record(tmp_path):
    """Item 6: a replica that grew by 8 bytes never answers a suffix read (shard index)."""
    store, _ = make(tmp_path, replicas=3, min_block=1024)
    payload = os.urandom(4096)  # whole blocks: the extra bytes start a block of their own
    await store.set("shard", buf(payload))
    fd = os.open(tmp_path / "node1" / "shard", os.O_WRONLY | os.O_APPEND)  # same inode: xattr
    os.write(fd, b"\0" * 8)
    os.close(fd)
    for _ in range(6):
        reader = prefer(foreign(tmp_path, min_block=1024), "node1")
        got = await reader.get("shard", PROTO, SuffixByteRequest(16))
        assert got.to_bytes() == payload[-16:]


async def test_a_directory_where_a_file_belongs_is_corrupt_and_repair_says_so(tmp_path):
    """Item 7: a range past 1 MiB of a 3 MiB object never reads b"" from a directory in the
    file's place; repair cannot replace the directory and reports the failed copy."""
    store, _ = make(tmp_path, replicas=3)
    payload = os.urandom(3 << 20)
    await store.set("big", buf(payload))
    target = tmp_path / "node0" / "big"
    target.unlink()
    (target / "sub").mkdir(parents=True)
    for _ in range(4):
        got = await foreign(tmp_path).get("big", PROTO, RangeByteRequest(2 << 20, (2 << 20) + 100))
        assert got.to_bytes() == payload[2 << 20 : (2 << 20) + 100]
    scrubbed = await foreign(tmp_path).scrub()
    assert scrubbed.corrupt == [("big", "node0")]
    report = await foreign(tmp_path).repair()
    assert not report.ok and [(k, n) for k, n, _ in report.failed] == [("big", "node0")]
    shutil.rmtree(target)
    assert (await foreign(tmp_path).repair()).ok


async def test_an_unrecorded_replica_loses_to_recorded_ones(tmp_path):
    """Item 8: one replica lost its xattr and one byte; full reads always return the bytes
    the two recorded replicas agree on."""
    store, _ = make(tmp_path, replicas=3)
    payload = os.urandom(2000)
    await store.set("k", buf(payload))
    path = tmp_path / "node1" / "k"
    os.removexattr(path, XATTR)
    path.write_bytes(flip_byte(path.read_bytes()))
    assert (await foreign(tmp_path).scrub()).unrecorded == [("k", "node1")]
    for _ in range(30):
        assert (await prefer(foreign(tmp_path), "node1").get("k", PROTO)).to_bytes() == payload


async def test_a_ranged_read_of_a_truncated_replica_fails_over_and_repairs(tmp_path):
    """Item 18: a truncated or extended replica is a checksum mismatch (read repair), never
    a ValueError reaching the caller."""
    store, _ = make(tmp_path, replicas=3, min_block=1024)
    payload = os.urandom(10_000)
    await store.set("big", buf(payload))
    for node, size in ((0, 6000), (1, 12_000)):  # one bad replica at a time (R - W = 1)
        os.truncate(tmp_path / f"node{node}" / "big", size)
        for _ in range(5):
            reader = prefer(foreign(tmp_path, min_block=1024), f"node{node}")
            got = await reader.get("big", PROTO, RangeByteRequest(4000, 9000))
            assert got.to_bytes() == payload[4000:9000]
        assert (await store.repair()).ok
        assert all(on_disk(tmp_path, i, "big") == payload for i in range(3))


@pytest.mark.parametrize("key", ["x" * 256, "a/" + "y" * 300, "/".join(["z" * 200] * 6)])
async def test_keys_no_node_can_hold_are_refused_before_any_node(tmp_path, key):
    """Item 25: a component over NAME_MAX or a key over 1024 bytes is InvalidKeyError and
    never touches (or counts against) a node."""
    store, faults = make(tmp_path, replicas=3)
    for _ in range(6):
        with pytest.raises(InvalidKeyError):
            await store.get(key, PROTO)
        with pytest.raises(InvalidKeyError):
            await store.set(key, buf(b"v"))
    assert all(not f.counts for f in faults)
    assert not any(st["failures"] for st in store.router.figures()["sources"].values())


async def test_repair_reports_a_full_disk_as_a_failed_copy(tmp_path):
    """Items 12, 20: a full disk is the node's answer: the write goes on with the quorum,
    nothing acknowledged is lost, and repair reports the copy it could not make."""
    store, faults = make(tmp_path, replicas=3, write_quorum=2)
    await store.set("k", buf(b"v1"))
    faults[1].full_disk = True
    await store.set("k", buf(b"v2"))
    assert (await store.get("k", PROTO)).to_bytes() == b"v2"
    report = await store.repair()
    assert [(k, n) for k, n, _ in report.failed] == [("k", "node1")] and not report.ok
    assert "ENOSPC" in report.failed[0][2] or "space" in report.failed[0][2]
    faults[1].full_disk = False
    assert (await store.repair()).ok and on_disk(tmp_path, 1, "k") == b"v2"


async def test_a_frozen_node_does_not_hold_up_an_acknowledged_write_or_a_read(tmp_path):
    """Item 13: one frozen node (R=3, W=2): set returns while it is still frozen, the
    laggard becomes a hint, reads answer from the others; after thaw it catches up."""
    store, faults = make(tmp_path, replicas=3, write_quorum=2)
    await store.set("k", buf(b"v1"))
    faults[0].frozen = True
    await store.set("k", buf(b"v2"))
    assert faults[0].frozen  # it returned without the frozen node
    assert (await foreign(tmp_path, write_quorum=2).get("k", PROTO)).to_bytes() == b"v2"
    for _ in range(3):
        assert (await store.get("k", PROTO)).to_bytes() == b"v2"
    faults[0].frozen = False
    while store._laggards:
        await asyncio.wait(set(store._laggards))
    await store.flush()
    assert on_disk(tmp_path, 0, "k") == b"v2"


async def test_three_way_split_of_conditional_creates_resolves(tmp_path):
    """Item 12: three racers, each reaching a different replica first (latencies force
    it): exactly one value wins, on every replica, and no racer's read sees absent."""
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    racers = []
    for i in range(3):
        faults = [Faults(latency=0.0 if j == i else 0.05) for j in range(3)]
        nodes = [FaultyStore(LocalStore(d), faults[j], name=f"r{j}") for j, d in enumerate(dirs)]
        racers.append(ReplicatedStore(nodes, replicas=3, state_dir=tmp_path / f"s{i}"))

    async def race(i: int) -> bytes:
        await racers[i].set_if_not_exists("manifest", buf(f"racer-{i}".encode()))
        return (await racers[i].get("manifest", PROTO)).to_bytes()

    seen = await asyncio.gather(*(race(i) for i in range(3)))
    assert len(set(seen)) == 1 and seen[0] in {f"racer-{i}".encode() for i in range(3)}
    for r in racers:
        await r.flush()
    assert {(d / "manifest").read_bytes() for d in dirs} == {seen[0]}


async def test_each_missed_node_gets_its_own_hint_on_the_nodes_that_acknowledged(tmp_path):
    """R=3, W=1 with two nodes down: the one that acknowledged holds one hint per missed
    node, each naming that node. The puts bound the hint body late, so every hint file
    held the last missed node's body (the other node's hint pointed at the wrong node)."""
    from swarmstore.storage._hints import hint_name, parse_hint

    store, faults = make(tmp_path, replicas=3, write_quorum=1, read_quorum=1)
    await store.set("k", buf(b"v1"))
    up = store.targets("k")[0]
    down = [n for n in store.targets("k") if n is not up]
    for n in down:
        faults[int(n.name[-1])].down = True
    await store.set("k", buf(b"v2"))
    for n in down:
        hint = parse_hint(await up.meta_get(hint_name(n.name, "k")), up.name)
        assert hint is not None and hint.node == n.name, (n.name, hint)
    for n in down:
        faults[int(n.name[-1])].down = False
    await store.flush()
    await store.aclose()
