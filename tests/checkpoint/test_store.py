"""ManifestStore: zarr's store contract, plus content addressing, verification, read-only use."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from swarmstore.checkpoint import ManifestStore, content_hash
from swarmstore.checkpoint._manifest import object_key
from swarmstore.errors import CheckpointNotFoundError, ChecksumMismatch, InvalidKeyError

PROTO = default_buffer_prototype()


class TestManifestStoreContract(StoreTests[ManifestStore, cpu.Buffer]):
    """All 42 of zarr's contract tests, writable mode, over a MemoryStore."""

    store_cls = ManifestStore
    buffer_cls = cpu.Buffer

    async def set(self, store: ManifestStore, key: str, value: Buffer) -> None:
        # backdoor: put the object in the backing store and name it in the entries
        digest = content_hash(value.as_buffer_like())
        await store.backing.set(object_key(digest), value)
        store.changes[key] = (digest, len(value))

    async def get(self, store: ManifestStore, key: str) -> Buffer:
        entry = store.changes[key]
        if isinstance(entry, str):
            return cpu.Buffer.from_bytes(entry.encode())
        if entry[1] == 0:
            return cpu.Buffer.from_bytes(b"")
        value = await store.backing.get(object_key(entry[0]), PROTO)
        assert value is not None
        return value

    @pytest.fixture
    def store_kwargs(self) -> dict:
        return {"backing": zarr.storage.MemoryStore()}

    def test_store_repr(self, store: ManifestStore) -> None:
        assert repr(store).startswith("ManifestStore(MemoryStore(")

    def test_store_supports_writes(self, store: ManifestStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ManifestStore) -> None:
        assert store.supports_listing


class TestManifestStoreOverLocal(TestManifestStoreContract):
    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"backing": zarr.storage.LocalStore(tmp_path)}

    def test_store_repr(self, store: ManifestStore) -> None:
        assert repr(store).startswith("ManifestStore(LocalStore(")


def _buf(data: bytes) -> Buffer:
    return cpu.Buffer.from_bytes(data)


async def test_identical_bytes_are_stored_once():
    backing = zarr.storage.MemoryStore()
    store = ManifestStore(backing)
    await store.set("a/c/0", _buf(b"same"))
    await store.set("a/c/1", _buf(b"same"))
    await store.set("b/c/0", _buf(b"other"))
    objects = [k async for k in backing.list_prefix("objects/")]
    assert len(objects) == 2
    assert (store.written_objects, store.written_bytes, store.reused_objects) == (2, 9, 1)


async def test_known_objects_are_not_rewritten():
    backing = zarr.storage.MemoryStore()
    digest = content_hash(b"old")
    await backing.set(object_key(digest), _buf(b"old"))
    store = ManifestStore(backing, known={digest})
    await store.set("c/0", _buf(b"old"))
    assert store.written_objects == 0 and store.reused_objects == 1
    assert (await store.get("c/0", PROTO)).to_bytes() == b"old"


async def test_metadata_documents_are_inline_text():
    backing = zarr.storage.MemoryStore()
    store = ManifestStore(backing)
    await store.set("x/zarr.json", _buf(b'{"zarr_format": 3}'))
    await store.set("y/zarr.json", _buf(b"\xff\xfe not text"))
    assert store.changes["x/zarr.json"] == '{"zarr_format": 3}'
    assert isinstance(store.changes["y/zarr.json"], tuple)
    assert [k async for k in backing.list_prefix("objects/")] != []
    assert (await store.get("x/zarr.json", PROTO, RangeByteRequest(2, 7))).to_bytes() == b"zarr_"


async def test_corrupt_object_is_refused_and_missing_object_is_an_error():
    backing = zarr.storage.MemoryStore()
    store = ManifestStore(backing)
    await store.set("c/0", _buf(b"payload"))
    digest = store.changes["c/0"][0]
    await backing.set(object_key(digest), _buf(b"pAyload"))
    with pytest.raises(ChecksumMismatch, match="fails its xxh3 check"):
        await store.get("c/0", PROTO)
    unverified = ManifestStore(backing, dict(store.changes), verify=False)
    assert (await unverified.get("c/0", PROTO)) is not None
    await backing.delete(object_key(digest))
    with pytest.raises(CheckpointNotFoundError, match="is missing"):
        await store.get("c/0", PROTO)


async def test_read_only_view_refuses_writes_and_reads_lazily():
    backing = zarr.storage.MemoryStore()
    writer = ManifestStore(backing)
    arr = zarr.create_array(writer, name="a", shape=(6, 6), chunks=(3, 3), dtype="f8")
    arr[:] = np.arange(36.0).reshape(6, 6)
    reader = writer.with_read_only(True)
    with pytest.raises(ValueError, match="read-only"):
        await reader.set("a/c/0/0", _buf(b"x"))
    with pytest.raises(ValueError, match="read-only"):
        await reader.delete("a/c/0/0")
    opened = zarr.open_array(reader, path="a", mode="r")
    np.testing.assert_array_equal(opened[3:, :3], np.arange(36.0).reshape(6, 6)[3:, :3])
    assert sorted([k async for k in reader.list_dir("a/c")]) == ["0", "1"]


async def test_unsafe_keys_are_refused():
    store = ManifestStore(zarr.storage.MemoryStore())
    with pytest.raises(InvalidKeyError):
        await store.set("../escape", _buf(b"x"))
