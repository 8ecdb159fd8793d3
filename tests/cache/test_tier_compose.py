"""Tiers compose like zict's ``Buffer(fast, slow)``: TieredStore takes any chain of objects
with the tier protocol. Two tiers written here, with no change to TieredStore: a bounded
dict tier (a real FIFO cache of N values, in sync form) and an async-only "peer" tier
(reads another cache's RAM through a coroutine, as a peer-worker tier would over the
network; it has no sync form, so zarr's sync path passes it by)."""

from __future__ import annotations

import asyncio
import pathlib
from collections import OrderedDict
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore.cache import Entry, MemoryTier, SyncTier, Tier, TieredStore
from swarmstore.cache._tier import Generations
from swarmstore.testing import Faults, FaultyStore

proto = default_buffer_prototype()


class DictTier(SyncTier):
    """At most ``max_entries`` values in a dict, the oldest dropped first."""

    name = "dict"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str, Any], Entry] = OrderedDict()
        self._gens = Generations()
        self.hits = self.misses = self.puts = self.refused = 0

    def ticket(self, ns: str, key: str) -> int:
        return self._gens.ticket()

    def get_sync(self, ns: str, key: str, span: Any) -> Entry | None:
        entry = self._data.get((ns, key, span))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put_sync(self, ns: str, key: str, span: Any, entry: Entry, ticket: Any) -> bool:
        if not self._gens.current(ns, key, ticket):
            self.refused += 1
            return False
        self._data[(ns, key, span)] = entry
        self.puts += 1
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        return True

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None:
        self._gens.bump(ns, key, prefix=prefix)
        for k in [k for k in self._data if k[0] == ns and _matches(k[1], key, prefix)]:
            del self._data[k]

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._data)}


def _matches(name: str, key: str, prefix: bool) -> bool:
    return name.startswith(key) if prefix else name == key


class PeerTier:
    """A peer's RAM tier, reachable only by a coroutine (no sync form)."""

    name = "peer"
    supports_sync = False

    def __init__(self, peer: MemoryTier) -> None:
        self.peer = peer
        self.asked = 0

    def ticket(self, ns: str, key: str) -> Any:
        return self.peer.ticket(ns, key)

    def get_sync(self, ns: str, key: str, span: Any) -> Entry | None:
        raise AssertionError("the sync path must not ask a tier without a sync form")

    async def get(self, ns: str, key: str, span: Any) -> Entry | None:
        self.asked += 1
        await asyncio.sleep(0)  # a network round trip would be here
        return self.peer.get_sync(ns, key, span)

    def put_sync(self, ns: str, key: str, span: Any, entry: Entry, ticket: Any) -> bool:
        return False  # a peer's cache is filled by the peer, not by us

    async def put(self, ns: str, key: str, span: Any, entry: Entry, ticket: Any) -> bool:
        return False

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None:
        self.peer.evict_sync(ns, key, prefix=prefix)

    async def evict(self, ns: str, key: str, *, prefix: bool = False) -> None:
        self.evict_sync(ns, key, prefix=prefix)

    def stats(self) -> dict[str, int]:
        return {"asked": self.asked}

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _gets(store: FaultyStore) -> int:
    return store.faults.counts.get("get", 0)


def _write(store: TieredStore, n: int = 8) -> np.ndarray:
    data = np.arange(n * 100, dtype="f8")
    z = zarr.create_array(store, shape=data.shape, chunks=(100,), dtype="f8")
    z[:] = data
    return data


def test_both_tiers_follow_the_protocol() -> None:
    assert isinstance(DictTier(4), Tier)
    assert isinstance(PeerTier(MemoryTier(1000)), Tier)


def test_a_slow_tier_under_ram_serves_what_ram_dropped(tmp_path: pathlib.Path) -> None:
    backing = FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")
    ram, slow = MemoryTier(2**20), DictTier(64)
    store = TieredStore(backing, tiers=[ram, slow])
    data = _write(store)
    z = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(z[:], data)  # cold: both tiers filled
    before = _gets(backing)
    ram.clear()
    np.testing.assert_array_equal(z[:], data)  # RAM empty: the dict tier serves
    assert _gets(backing) == before and slow.hits >= 8
    hits = slow.hits
    np.testing.assert_array_equal(z[:], data)  # promoted back into RAM
    assert slow.hits == hits and _gets(backing) == before
    assert store.stats()["dict"]["entries"] >= 8


def test_a_write_drops_the_key_from_every_tier_and_refuses_late_fills(
    tmp_path: pathlib.Path,
) -> None:
    backing = FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")
    slow = DictTier(64)
    store = TieredStore(backing, tiers=[MemoryTier(2**20), slow])
    _write(store)
    z = zarr.open_array(store, mode="r")
    z[:]
    ticket = slow.ticket(store.namespace, "c/0")  # a read that started before the write
    zarr.open_array(store)[0:100] = 7.0
    assert not slow.put_sync(store.namespace, "c/0", None, Entry(b"old", 0.0), ticket)
    np.testing.assert_array_equal(zarr.open_array(store, mode="r")[0:100], np.full(100, 7.0))


def test_the_sync_path_passes_a_tier_without_a_sync_form(tmp_path: pathlib.Path) -> None:
    backing = FaultyStore(LocalStore(tmp_path / "data"), Faults(), name="local")
    peer_ram = MemoryTier(2**20)
    peer = PeerTier(peer_ram)
    store = TieredStore(backing, tiers=[MemoryTier(2**20), peer], sync_io=True)
    value = cpu.Buffer.from_bytes(b"x" * 1000)
    store.set_sync("k", value)
    peer_ram.put_sync(store.namespace, "k", None, Entry(b"peer", 0.0), peer_ram.ticket("", ""))
    assert store.get_sync("k").to_bytes() == b"x" * 1000  # the backing, not the peer
    assert peer.asked == 0
    store.tiers[0].clear()  # type: ignore[attr-defined]
    got = asyncio.run(store.get("k", proto))  # the async path asks the peer first
    assert got.to_bytes() == b"peer" and peer.asked == 1
