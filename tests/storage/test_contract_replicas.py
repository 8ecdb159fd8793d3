"""swarmstore's own replica contract over each node backend (local, memory, S3)."""

from __future__ import annotations

import uuid

import pytest
from zarr.storage import LocalStore, MemoryStore

from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, FaultyStore, flip_byte
from swarmstore.testing.contracts import ReplicaContractTests


def _build(stores, tmp_path, replicas, **kwargs):
    faults = [Faults() for _ in stores]
    nodes = [
        FaultyStore(s, f, name=f"n{i}") for i, (s, f) in enumerate(zip(stores, faults, strict=True))
    ]
    state = tmp_path / uuid.uuid4().hex
    return ReplicatedStore(nodes, replicas=replicas, state_dir=state, **kwargs), faults


class TestLocalNodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path):
        def make(n, replicas, **kwargs):
            dirs = [tmp_path / uuid.uuid4().hex for _ in range(n)]
            store, faults = _build([LocalStore(d) for d in dirs], tmp_path, replicas, **kwargs)

            def rot(i, key):
                path = dirs[i] / key
                # write_bytes truncates in place: same inode, so the checksum xattr stays
                path.write_bytes(flip_byte(path.read_bytes()))

            return store, faults, rot

        return make


class TestMemoryNodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path):
        def make(n, replicas, **kwargs):
            stores = [MemoryStore() for _ in range(n)]
            store, faults = _build(stores, tmp_path, replicas, **kwargs)

            def rot(i, key):
                node = store.nodes[i].inner
                old, record = node.records[key]
                new = type(old).from_bytes(flip_byte(old.to_bytes()))
                stores[i]._store_dict[key] = new
                node.records[key] = (new, record)

            return store, faults, rot

        return make


class TestS3Nodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path, s3_store_factory, s3_endpoint):
        fs = s3_endpoint.filesystem()  # a synchronous client for the backdoor

        def make(n, replicas, **kwargs):
            prefix = uuid.uuid4().hex[:8]
            stores = [s3_store_factory(f"{prefix}/n{i}") for i in range(n)]
            store, faults = _build(stores, tmp_path, replicas, **kwargs)

            def rot(i, key):
                node = store.nodes[i].inner
                bucket, k = node._loc(key)
                meta = fs.call_s3("head_object", Bucket=bucket, Key=k)["Metadata"]
                body = fs.cat_file(f"{bucket}/{k}")
                fs.call_s3("put_object", Bucket=bucket, Key=k, Body=flip_byte(body), Metadata=meta)

            return store, faults, rot

        return make
