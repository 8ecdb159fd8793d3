"""S3 nodes: checksums ride in object metadata (no extra requests); plain zarr reads a node."""

from __future__ import annotations

import asyncio
import collections
import logging
import re

import dask
import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import ReplicaUnavailable
from swarmstore.storage import ReplicatedStore

PROTO = default_buffer_prototype()


class ServerLog(logging.Handler):
    """Counts the requests the moto server answered (its werkzeug access log), by
    ``(method, "meta" | "data")``: counted at the server, not in the client."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(
            r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|DELETE|POST) (\S+)', record.getMessage()
        )
        if match:
            method, path = match.groups()
            self.calls[(method, "meta" if "/.swarmstore/" in path else "data")] += 1


@pytest.fixture
def server_log():
    log = ServerLog()
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(log)
    yield log
    werkzeug.removeHandler(log)
    werkzeug.setLevel(level)


@pytest.fixture
def counted(s3_store_factory, tmp_path, server_log):
    """A ReplicatedStore over 3 S3 nodes (R=3, W=2, so Rq=2), with the server's request log."""
    stores = [s3_store_factory(f"n{i}") for i in range(3)]
    store = ReplicatedStore(stores, replicas=3, state_dir=tmp_path / "state")
    return store, stores, server_log


async def _settled(log: ServerLog) -> collections.Counter[tuple[str, str]]:
    """The counts once the server logged every request it answered (the log line comes
    after the response, from the server's thread)."""
    seen = -1
    while sum(log.calls.values()) != seen:
        seen = sum(log.calls.values())
        await asyncio.sleep(0.05)
    return collections.Counter(log.calls)


async def test_a_write_is_phase_one_then_one_put_and_a_read_one_get_plus_one_probe(counted):
    store, _, log = counted
    await store.set("a/c/0", PROTO.buffer.from_bytes(b"x" * 5000))
    # new key: HEAD of the data and of its tombstone (phase 1), then the PUT, per replica
    assert await _settled(log) == {("HEAD", "data"): 3, ("HEAD", "meta"): 3, ("PUT", "data"): 3}
    log.calls.clear()
    await store.set("a/c/0", PROTO.buffer.from_bytes(b"y" * 5000))
    assert await _settled(log) == {
        ("HEAD", "data"): 3,
        ("HEAD", "meta"): 3,  # the tombstone too: a delete left halfway leaves data
        ("PUT", "data"): 3,
    }  # an overwrite
    log.calls.clear()
    got = await store.get("a/c/0", PROTO)
    assert got.to_bytes() == b"y" * 5000
    assert await _settled(log) == {("GET", "data"): 1, ("HEAD", "data"): 1}  # Rq - 1 probes


async def test_with_a_read_quorum_of_one_a_read_is_one_get(s3_store_factory, tmp_path, server_log):
    stores = [s3_store_factory(f"q{i}") for i in range(2)]
    store = ReplicatedStore(stores, replicas=2, state_dir=tmp_path / "state")  # W=2, Rq=1
    await store.set("k", PROTO.buffer.from_bytes(b"v" * 100))
    server_log.calls.clear()
    assert (await store.get("k", PROTO)).to_bytes() == b"v" * 100
    assert await _settled(server_log) == {("GET", "data"): 1}


async def test_ranged_read_is_one_get_plus_the_probe(counted):
    store, _, log = counted
    await store.set("shard", PROTO.buffer.from_bytes(bytes(range(256)) * 40))
    await _settled(log)
    log.calls.clear()
    got = await store.get("shard", PROTO, byte_range=zarr.abc.store.RangeByteRequest(10, 90))
    assert got.to_bytes() == (bytes(range(256)) * 40)[10:90]
    assert await _settled(log) == {("GET", "data"): 1, ("HEAD", "data"): 1}


async def test_plain_zarr_reads_any_single_s3_node(counted):
    store, stores, _ = counted
    data = np.arange(30 * 30, dtype="i2").reshape(30, 30)
    group = await zarr.api.asynchronous.open_group(store=store, mode="w")
    arr = await group.create_array("v", shape=data.shape, chunks=(10, 10), dtype="i2")
    await arr.setitem(slice(None), data)
    for plain_store in stores:
        plain = await zarr.api.asynchronous.open_group(store=plain_store, mode="r")
        assert [name async for name, _ in plain.members()] == ["v"]
        np.testing.assert_array_equal(await (await plain.getitem("v")).getitem(slice(None)), data)


async def test_object_replaced_behind_its_back_keeps_failing_the_checksum(counted, s3_endpoint):
    store, _, _ = counted
    await store.set("k", PROTO.buffer.from_bytes(b"good bytes"))
    fs = s3_endpoint.filesystem()
    for node in store.nodes:
        bucket, key = node._loc("k")
        meta = fs.call_s3("head_object", Bucket=bucket, Key=key)["Metadata"]
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"evil bytes", Metadata=meta)
    with pytest.raises(ReplicaUnavailable, match="checksum"):
        await store.get("k", PROTO)


async def test_conditional_create_on_s3_nodes_has_one_winner(s3_store_factory, tmp_path):
    import asyncio

    stores = [s3_store_factory(f"cas{i}") for i in range(3)]
    writers = [ReplicatedStore(stores, replicas=3, state_dir=tmp_path / f"w{i}") for i in range(4)]
    await asyncio.gather(
        *(
            w.set_if_not_exists("m", PROTO.buffer.from_bytes(f"w{i}".encode()))
            for i, w in enumerate(writers)
        )
    )
    for w in writers:
        await w.replay_hints()
    held = {(await n.read("m"))[0] for n in writers[0].nodes}
    assert len(held) == 1
    for w in writers:
        assert (await w.get("m", PROTO)).to_bytes() in {f"w{i}".encode() for i in range(4)}


async def test_an_unreachable_s3_node_is_node_unavailable_and_maintenance_goes_on(
    s3_endpoint, storage_bucket, tmp_path
):
    """Issue 14: one S3 node behind a proxy that resets every connection (a dead node):
    its errors are NodeUnavailable (never a botocore type), reads go on, scrub and repair
    report it unreachable and check the other nodes."""
    from swarmstore.errors import NodeUnavailable
    from swarmstore.storage import NodeSpec
    from swarmstore.testing import s3_storage_options
    from swarmstore.testing.proxy import Proxy

    with Proxy(s3_endpoint.url) as proxy:
        urls = [s3_endpoint.url, s3_endpoint.url, proxy.url]
        specs = [
            NodeSpec(
                f"s3://{storage_bucket}/dead-{tmp_path.name}-{i}",
                name=f"n{i}",
                storage_options=s3_storage_options(url),
            )
            for i, url in enumerate(urls)
        ]
        store = ReplicatedStore(specs, replicas=3, write_quorum=2, state_dir=tmp_path / "s")
        for i in range(4):
            await store.set(f"k{i}", PROTO.buffer.from_bytes(b"v%d" % i))
        proxy.kill()
        with pytest.raises(NodeUnavailable):
            await store.nodes[2].state("k0")
        for i in range(4):
            assert (await store.get(f"k{i}", PROTO)).to_bytes() == b"v%d" % i
        await store.set("k0", PROTO.buffer.from_bytes(b"new"))  # W=2 without n2
        scrubbed = await store.scrub()
        assert scrubbed.unreachable == ["n2"] and scrubbed.keys == 4 and not scrubbed.ok
        repaired = await store.repair()
        assert repaired.unreachable == ["n2"] and not repaired.ok
        proxy.revive()
        assert (await store.repair()).ok
        await store.aclose()


def test_s3_nodes_built_from_urls_never_hide_a_node_behind_botocore_retries():
    """Issue 15: connect/read timeouts and no botocore retry on the S3 nodes swarmstore
    builds; the user's config_kwargs win."""
    from swarmstore.storage import node_from

    node = node_from("s3://bucket/p", storage_options={"anon": True})
    cfg = node.fs.config_kwargs
    assert cfg["connect_timeout"] == 2 and cfg["read_timeout"] == 30  # the documented defaults
    with dask.config.set({"swarmstore.network.s3-read-timeout": "7s"}):
        assert node_from("s3://bucket/p").fs.config_kwargs["read_timeout"] == 7
    assert cfg["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    mine = node_from("s3://bucket", storage_options={"config_kwargs": {"read_timeout": 60}})
    assert mine.fs.config_kwargs["read_timeout"] == 60


async def test_reads_tell_the_router_the_bytes_they_move(tmp_path):
    """Issue 15: a ranged read passes its size; every fetch lets the router measure bytes."""
    from swarmstore.network import TransferRouter

    class Recording(TransferRouter):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[dict] = []

        async def fetch(self, sources, attempt, **kwargs):
            src, got, failures = await super().fetch(sources, attempt, **kwargs)
            measure = kwargs.get("measure") or kwargs.get("size")
            self.calls.append({**kwargs, "measured": measure(got) if callable(measure) else None})
            return src, got, failures

    router = Recording()
    nodes = [f"memory://bytes-{tmp_path.name}-{i}" for i in range(2)]
    store = ReplicatedStore(nodes, replicas=2, state_dir=tmp_path / "s", router=router)
    await store.set("k", PROTO.buffer.from_bytes(b"x" * 4000))
    await store.get("k", PROTO, byte_range=zarr.abc.store.RangeByteRequest(100, 1100))
    await store.get("k", PROTO)
    ranged, full = router.calls
    assert ranged["nbytes"] == 1000 and ranged["measured"] == 1000
    assert full["measured"] == 4000


async def test_a_frozen_s3_node_does_not_hold_up_an_acknowledged_write(
    s3_endpoint, storage_bucket, tmp_path
):
    """Issue 11 item 13 over real sockets: a node that accepts and never answers (SIGSTOP);
    set returns once W=2 acknowledged, while the node is still frozen."""
    from swarmstore.storage import NodeSpec
    from swarmstore.testing import s3_storage_options
    from swarmstore.testing.proxy import Proxy

    with Proxy(s3_endpoint.url) as proxy:
        urls = [s3_endpoint.url, s3_endpoint.url, proxy.url]
        specs = [
            NodeSpec(
                f"s3://{storage_bucket}/frozen-{tmp_path.name}-{i}",
                name=f"n{i}",
                storage_options=s3_storage_options(url),
            )
            for i, url in enumerate(urls)
        ]
        store = ReplicatedStore(specs, replicas=3, write_quorum=2, state_dir=tmp_path / "s")
        await store.set("k", PROTO.buffer.from_bytes(b"v1"))
        proxy.freeze()
        await store.set("k", PROTO.buffer.from_bytes(b"v2"))
        assert proxy.frozen  # returned without it
        assert store.hints.has("n2", "k") or store._laggards
        proxy.thaw()
        await store.aclose()
