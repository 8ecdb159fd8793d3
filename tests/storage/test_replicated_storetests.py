"""zarr's own store contract (zarr.testing.store.StoreTests) for ReplicatedStore."""

from __future__ import annotations

import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from swarmstore.storage import Record, ReplicatedStore


class _Backdoor:
    """Backdoor set/get straight at the nodes, bypassing the API under test."""

    async def set(self, store: ReplicatedStore, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        record = Record.of(data)
        for node in store.targets(key):
            await node.write(key, data, record)

    async def get(self, store: ReplicatedStore, key: str) -> Buffer:
        node = store.targets(key)[0]
        got = await node.read(key)
        assert got is not None, key
        return default_buffer_prototype().buffer.from_bytes(got[0])

    def test_store_repr(self, store: ReplicatedStore) -> None:
        assert repr(store).startswith("ReplicatedStore([")

    def test_store_supports_writes(self, store: ReplicatedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ReplicatedStore) -> None:
        assert store.supports_listing


class TestReplicatedLocal(_Backdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        nodes = [f"file://{tmp_path}/node{i}" for i in range(3)]
        return {"nodes": nodes, "replicas": 2, "state_dir": str(tmp_path / "state")}


class TestReplicatedMixed(_Backdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    """Two local nodes and two memory nodes, three replicas."""

    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path, request) -> dict:
        tag = abs(hash(request.node.nodeid))
        nodes = [
            f"file://{tmp_path}/a",
            f"file://{tmp_path}/b",
            f"memory://{tag}-c",
            f"memory://{tag}-d",
        ]
        return {"nodes": nodes, "replicas": 3, "state_dir": str(tmp_path / "state")}


class TestReplicatedS3(_Backdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    """Three S3 nodes (prefixes of one moto bucket) reached through s3fs."""

    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, s3_store_factory, tmp_path) -> dict:
        nodes = [s3_store_factory(f"node{i}") for i in range(3)]
        return {"nodes": nodes, "replicas": 2, "state_dir": str(tmp_path / "state")}
