"""zarr's store contract (zarr.testing.store.StoreTests, its sync methods included) over
erasure-coded node sets: every key coded, RS(4,2) over six local directories and RS(2,1)
over three memory nodes. The backdoors write and read fragments straight at the nodes."""

from __future__ import annotations

import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from swarmstore.storage import ReplicatedStore
from swarmstore.storage._fragments import codec, fragments_of


class _CodedBackdoor:
    async def set(self, store: ReplicatedStore, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        coding = store.coding_for(key)
        if coding is None:
            from swarmstore.storage import Record

            for node in store.targets(key):
                await node.write(key, data, Record.of(data))
            return
        pieces = fragments_of(coding.k, coding.m, data, store.min_block)
        for node, (frag, record) in zip(store.targets(key), pieces, strict=True):
            await node.write(key, frag, record)

    async def get(self, store: ReplicatedStore, key: str) -> Buffer:
        coding = store.coding_for(key)
        proto = default_buffer_prototype()
        if coding is None:
            got = await store.targets(key)[0].read(key)
            assert got is not None, key
            return proto.buffer.from_bytes(got.data)
        pieces = {}
        for node in store.targets(key)[: coding.k]:
            got = await node.read(key)
            assert got is not None and got.record is not None and got.record.fragment, key
            pieces[got.record.fragment.index] = got.data
        frag = got.record.fragment
        return proto.buffer.from_bytes(
            codec(frag.k, frag.m, frag.codec).decode(pieces, frag.length, frag.digest)
        )

    def test_store_repr(self, store: ReplicatedStore) -> None:
        assert "coding=" in repr(store)

    def test_store_supports_writes(self, store: ReplicatedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ReplicatedStore) -> None:
        assert store.supports_listing


class TestCodedLocal(_CodedBackdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        nodes = [f"file://{tmp_path}/node{i}" for i in range(6)]
        return {"nodes": nodes, "coding": {"": (4, 2)}, "state_dir": str(tmp_path / "state")}


class TestCodedMemory(_CodedBackdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path, request) -> dict:
        tag = abs(hash(request.node.nodeid))
        nodes = [f"memory://{tag}-{i}" for i in range(3)]
        return {"nodes": nodes, "coding": "2+1", "state_dir": str(tmp_path / "state")}
