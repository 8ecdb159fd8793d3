"""Requests per operation on obstore nodes, counted at the server: a moto server in its own
process whose access log a RequestLog reads back (issue 16: "one GET per verified read")."""

from __future__ import annotations

import uuid

import dask
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.storage import ObstoreNode, ReplicatedStore, node_from
from swarmstore.testing import RequestLog, moto_server

PROTO = default_buffer_prototype()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One moto server process for the module, with its access log."""
    path = tmp_path_factory.mktemp("moto") / "access.log"
    with moto_server(process=True, log=path) as endpoint:
        yield endpoint, RequestLog(path, endpoint.url), endpoint.make_bucket()


def _store(logged, tmp_path, n: int, replicas: int, **kw) -> ReplicatedStore:
    endpoint, _, bucket = logged
    prefix = uuid.uuid4().hex[:8]
    nodes = [endpoint.object_store(bucket, f"{prefix}/n{i}") for i in range(n)]
    store = ReplicatedStore(nodes, replicas=replicas, state_dir=tmp_path / "state", **kw)
    assert all(isinstance(node, ObstoreNode) for node in store.nodes)
    return store


async def test_a_verified_read_with_a_read_quorum_of_one_is_one_get(logged, tmp_path):
    _, log, _ = logged
    store = _store(logged, tmp_path, 2, 2)  # W=2, Rq=1
    await store.set("c/0", PROTO.buffer.from_bytes(b"v" * 65536))
    log.clear()
    for _ in range(5):
        assert (await store.get("c/0", PROTO)).to_bytes() == b"v" * 65536
    assert log.counts() == {("GET", "data"): 5}  # no sidecar, no HEAD: the record rode along


async def test_a_quorum_read_is_one_get_plus_one_head_per_probe(logged, tmp_path):
    _, log, _ = logged
    store = _store(logged, tmp_path, 3, 3)  # W=2, Rq=2
    await store.set("c/0", PROTO.buffer.from_bytes(b"x" * 5000))
    log.clear()
    got = await store.get("c/0", PROTO, byte_range=zarr.abc.store.RangeByteRequest(10, 90))
    assert got.to_bytes() == b"x" * 80
    assert log.counts() == {("GET", "data"): 1, ("HEAD", "data"): 1}


async def test_the_write_all_profile_reads_one_get_over_three_replicas(logged, tmp_path):
    """W = R = 3, so Rq = 1: every acknowledged write is on every target, and a verified
    read of any one replica is current (issue 16's R=3 goal: no probe)."""
    _, log, _ = logged
    store = _store(logged, tmp_path, 3, 3, write_quorum=3)
    await store.set("c/0", PROTO.buffer.from_bytes(b"w" * 65536))
    log.clear()
    for _ in range(4):
        assert (await store.get("c/0", PROTO)).to_bytes() == b"w" * 65536
    assert log.counts() == {("GET", "data"): 4}


async def test_a_write_is_phase_one_then_one_conditional_put_per_replica(logged, tmp_path):
    _, log, _ = logged
    store = _store(logged, tmp_path, 3, 3)
    log.clear()
    await store.set("c/0", PROTO.buffer.from_bytes(b"x" * 5000))
    # a new key: HEAD of the data and of its tombstone (phase 1), then one PUT, per replica
    assert log.counts() == {("HEAD", "data"): 3, ("HEAD", "meta"): 3, ("PUT", "data"): 3}
    log.clear()
    await store.set("c/0", PROTO.buffer.from_bytes(b"y" * 5000))
    assert log.counts() == {
        ("HEAD", "data"): 3,
        ("HEAD", "meta"): 3,  # the tombstone too: a delete left halfway leaves data
        ("PUT", "data"): 3,
    }  # an overwrite


async def test_nodes_built_from_s3_urls_are_obstore_nodes_with_one_get_reads(logged, tmp_path):
    endpoint, log, bucket = logged
    prefix = uuid.uuid4().hex[:8]
    urls = [f"s3://{bucket}/{prefix}/u{i}" for i in range(2)]
    options = endpoint.storage_options()
    with dask.config.set({"swarmstore.storage.object-client": "obstore"}):
        nodes = [node_from(u, storage_options=options) for u in urls]
    assert [type(n) for n in nodes] == [ObstoreNode, ObstoreNode]
    assert [n.name for n in nodes] == urls
    store = ReplicatedStore(nodes, replicas=2, state_dir=tmp_path / "state")
    await store.set("k", PROTO.buffer.from_bytes(b"z" * 100))
    log.clear()
    assert (await store.get("k", PROTO)).to_bytes() == b"z" * 100
    assert log.counts() == {("GET", "data"): 1}


async def test_the_sidecar_fallback_costs_a_second_get_per_read(logged, tmp_path):
    """The same S3 prefix as a generic store (records in sidecars): the cost docs/storage.md
    names for stores without object metadata."""
    from zarr.storage import WrapperStore

    endpoint, log, bucket = logged
    prefix = uuid.uuid4().hex[:8]
    nodes = [WrapperStore(endpoint.object_store(bucket, f"{prefix}/w{i}")) for i in range(2)]
    store = ReplicatedStore(nodes, replicas=2, state_dir=tmp_path / "state")
    log.clear()
    await store.set("k", PROTO.buffer.from_bytes(b"s" * 100))
    writes = log.counts()
    log.clear()
    assert (await store.get("k", PROTO)).to_bytes() == b"s" * 100
    assert log.counts() == {("GET", "data"): 1, ("GET", "meta"): 1}
    assert writes[("PUT", "data")] == 2 and writes[("PUT", "meta")] == 4  # intent, record
