"""zarr's ObjectStore on obstore as storage nodes (issue 16): generic nodes (records in
sidecars) over obstore's in-memory store and over S3 (moto) reached through obstore. The
replica contract runs over both; zarr's StoreTests over the in-memory kind."""

from __future__ import annotations

import pickle
import uuid

import numpy as np
import obstore
import pytest
import zarr
from obstore.store import MemoryStore as ObMemory
from test_contract_replicas import _build
from test_replicated_storetests import _Backdoor
from zarr.core.buffer import cpu
from zarr.storage import ObjectStore
from zarr.testing.store import StoreTests

from swarmstore.storage import ReplicatedStore, StoreNode
from swarmstore.testing import flip_byte
from swarmstore.testing.contracts import ReplicaContractTests


class TestObstoreMemoryNodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path):
        def make(n, replicas, **kwargs):
            raw = [ObMemory() for _ in range(n)]
            store, faults = _build([ObjectStore(r) for r in raw], tmp_path, replicas, **kwargs)

            def rot(i, key):
                body = bytes(obstore.get(raw[i], key).bytes())
                obstore.put(raw[i], key, flip_byte(body))

            return store, faults, rot

        return make


class TestObstoreS3Nodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path, s3_endpoint, storage_bucket):
        fs = s3_endpoint.filesystem()  # a synchronous s3fs client for the backdoor

        def make(n, replicas, **kwargs):
            prefix = uuid.uuid4().hex[:8]
            stores = [s3_endpoint.object_store(storage_bucket, f"{prefix}/n{i}") for i in range(n)]
            store, faults = _build(stores, tmp_path, replicas, **kwargs)

            def rot(i, key):
                path = f"{storage_bucket}/{prefix}/n{i}/{key}"
                fs.pipe_file(path, flip_byte(fs.cat_file(path)))

            return store, faults, rot

        return make


class TestReplicatedOverObstoreNodes(_Backdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        nodes = [ObjectStore(ObMemory()) for _ in range(3)]
        return {"nodes": nodes, "replicas": 2, "state_dir": str(tmp_path / "state")}

    def test_serializable_store(self, store: ReplicatedStore) -> None:
        """obstore's in-memory store does not pickle (it lives in one process); its S3
        store does: ``test_a_store_over_obstore_s3_nodes_pickles``."""
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(store)


def test_an_obstore_s3_node_opens_with_plain_zarr(tmp_path, s3_endpoint, storage_bucket):
    prefix = uuid.uuid4().hex[:8]
    stores = [s3_endpoint.object_store(storage_bucket, f"{prefix}/n{i}") for i in range(2)]
    store = ReplicatedStore(stores, replicas=2, state_dir=tmp_path / "state")
    assert all(isinstance(n, StoreNode) for n in store.nodes)
    assert (
        store.nodes[0].name
        == f'object_store://S3Store(bucket="{storage_bucket}", prefix="{prefix}/n0")'
    )
    zarr.create_array(store, shape=(8,), chunks=(4,), dtype="i4")[:] = np.arange(8)
    plain = zarr.open_array(s3_endpoint.object_store(storage_bucket, f"{prefix}/n1"), mode="r")
    assert (plain[:] == np.arange(8)).all()


async def test_a_store_over_obstore_s3_nodes_pickles(tmp_path, s3_endpoint, storage_bucket):
    """A Dask task gets the store by pickle: nodes, names and data survive the trip."""
    prefix = uuid.uuid4().hex[:8]
    stores = [s3_endpoint.object_store(storage_bucket, f"{prefix}/n{i}") for i in range(2)]
    store = ReplicatedStore(stores, replicas=2, state_dir=tmp_path / "state")
    await store.set("k", cpu.Buffer.from_bytes(b"v" * 10))
    again = pickle.loads(pickle.dumps(store))
    assert [n.name for n in again.nodes] == [n.name for n in store.nodes]
    got = await again.get("k", cpu.buffer_prototype)
    assert got.to_bytes() == b"v" * 10
