"""zarr's own store contract (``StoreTests``) for TieredStore over local and memory stores.

S3 backing is covered by the behaviour tests in test_tiered.py (a full S3 run of the
contract takes about a minute against moto on a shared machine).

The backdoor ``get``/``set`` go to the backing store directly, as another writer would.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore
from zarr.testing.store import StoreTests

from swarmstore.cache import DiskTier, TieredStore


class _Backdoor:
    async def set(self, store: TieredStore, key: str, value: cpu.Buffer) -> None:
        await store.backing.set(key, value)

    async def get(self, store: TieredStore, key: str) -> cpu.Buffer:
        return await store.backing.get(key, prototype=default_buffer_prototype())

    def test_store_supports_writes(self, store: TieredStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: TieredStore) -> None:
        assert store.supports_listing

    def test_store_repr(self, store: TieredStore) -> None:
        text = repr(store)
        assert text.startswith("TieredStore(memory ")
        assert repr(store.backing) in text

    async def test_pickle_keeps_settings_not_contents(self, store: TieredStore) -> None:
        await store.set("c/0", cpu.Buffer.from_bytes(b"abc"))
        assert (await store.get("c/0", default_buffer_prototype())).to_bytes() == b"abc"
        copy = pickle.loads(pickle.dumps(store))
        assert copy == store
        assert copy.memory_bytes == store.memory_bytes
        assert copy.stats()["memory"]["entries"] == 0


class TestTieredOverLocal(_Backdoor, StoreTests[TieredStore, cpu.Buffer]):
    store_cls = TieredStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path: Any) -> dict[str, Any]:
        return {
            "backing": LocalStore(tmp_path / "data"),
            "memory_bytes": 2**20,
            "disk": DiskTier(tmp_path / "cache", max_bytes=2**24, fsync=False),
        }


class TestTieredOverMemory(_Backdoor, StoreTests[TieredStore, cpu.Buffer]):
    store_cls = TieredStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"backing": MemoryStore(), "memory_bytes": 2**20, "disk": False}
