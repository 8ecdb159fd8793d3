"""S3 nodes: checksums ride in object metadata (no extra requests); plain zarr reads a node."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import ReplicaUnavailable
from swarmstore.storage import ReplicatedStore

PROTO = default_buffer_prototype()


@pytest.fixture
def counted(s3_store_factory, tmp_path):
    """A ReplicatedStore over 3 S3 nodes, counting S3 requests by method."""
    stores = [s3_store_factory(f"n{i}") for i in range(3)]
    store = ReplicatedStore(stores, replicas=3, state_dir=tmp_path / "state")
    calls: collections.Counter[str] = collections.Counter()
    for node in store.nodes:
        original = node.fs._call_s3

        async def call(method, *args, _original=original, **kwargs):
            calls[method] += 1
            return await _original(method, *args, **kwargs)

        node.fs._call_s3 = call
    return store, stores, calls


async def test_one_request_per_replica_write_and_per_read(counted):
    store, _, calls = counted
    await store.set("a/c/0", PROTO.buffer.from_bytes(b"x" * 5000))
    assert calls == {"put_object": 3}
    calls.clear()
    got = await store.get("a/c/0", PROTO)
    assert got.to_bytes() == b"x" * 5000
    assert calls == {"get_object": 1}  # the checksum came back in the same response


async def test_ranged_read_is_one_request(counted):
    store, _, calls = counted
    await store.set("shard", PROTO.buffer.from_bytes(bytes(range(256)) * 40))
    calls.clear()
    got = await store.get("shard", PROTO, byte_range=zarr.abc.store.RangeByteRequest(10, 90))
    assert got.to_bytes() == (bytes(range(256)) * 40)[10:90]
    assert calls == {"get_object": 1}


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
