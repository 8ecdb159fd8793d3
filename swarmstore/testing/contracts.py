"""Contract tests any replicated swarmstore store reuses, whatever its node backend.

Subclass :class:`ReplicaContractTests` in a test module and provide the fixture
``replicated(n, replicas, **store_kwargs)`` returning ``(store, faults, rot)``: the store
(``store_kwargs`` passed to it, e.g. ``write_quorum``), one :class:`Faults` per node (in
node order), and ``rot(node_index, key)`` which flips a stored byte of ``key`` on that
node *at rest*, leaving its checksum record untouched.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from zarr.core.buffer import default_buffer_prototype

from swarmstore.errors import ReplicaUnavailable

__all__ = ["ReplicaContractTests"]

_PROTO = default_buffer_prototype()


def _buf(data: bytes) -> Any:
    return _PROTO.buffer.from_bytes(data)


def _index(store: Any, node: Any) -> int:
    return list(store.nodes).index(node)


class ReplicaContractTests:
    """Replica loss, corruption and checksum guarantees (see DESIGN.md, "Guarantees")."""

    @pytest.fixture
    def replicated(self) -> Any:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError

    async def test_r_minus_one_outages_lose_nothing(self, replicated: Any) -> None:
        """With W = R (so a read quorum of 1) any R-1 outages leave every value readable."""
        store, faults, _ = replicated(4, 3, write_quorum=3)
        values = {f"g/c/{i}": os.urandom(300) for i in range(12)}
        for k, v in values.items():
            await store.set(k, _buf(v))
        for down in [(0, 1), (1, 2), (2, 3), (0, 3)]:
            for i in down:
                faults[i].down = True
            for k, v in values.items():
                assert (await store.get(k, _PROTO)).to_bytes() == v
            for i in down:
                faults[i].down = False

    async def test_outages_beyond_the_read_quorum_raise_never_guess(self, replicated: Any) -> None:
        """R=3, W=2 (Rq=2): one outage reads; two raise ReplicaUnavailable naming the
        replicas, never a value that might be stale; the data is intact once they return."""
        store, faults, _ = replicated(3, 3, write_quorum=2)
        await store.set("k", _buf(b"v1"))
        faults[0].down = True
        assert (await store.get("k", _PROTO)).to_bytes() == b"v1"
        faults[1].down = True
        with pytest.raises(ReplicaUnavailable) as info:
            await store.get("k", _PROTO)
        assert "down" in info.value.tried["n0"] and "down" in info.value.tried["n1"]
        faults[0].down = faults[1].down = False
        assert (await store.get("k", _PROTO)).to_bytes() == b"v1"

    async def test_rot_is_detected_never_returned_and_repaired(self, replicated: Any) -> None:
        store, _, rot = replicated(3, 2)
        values = {f"k{i}": os.urandom(500) for i in range(8)}
        for k, v in values.items():
            await store.set(k, _buf(v))
        for k in values:
            rot(_index(store, store.targets(k)[0]), k)
        for k, v in values.items():
            assert (await store.get(k, _PROTO)).to_bytes() == v
        await store.flush()  # read repair rewrote the rotten replicas the reads touched
        report = await store.scrub()
        rotten = {(k, store.targets(k)[0].name) for k in values}
        assert set(report.corrupt) <= rotten and not (report.missing or report.stale), report
        fixed = await store.repair()
        assert fixed.ok and fixed.copies_written == len(report.corrupt), fixed
        assert (await store.scrub()).ok

    async def test_every_replica_rotten_raises_never_returns(self, replicated: Any) -> None:
        store, _, rot = replicated(3, 2)
        await store.set("k", _buf(b"precious" * 10))
        for node in store.targets("k"):
            rot(_index(store, node), "k")
        with pytest.raises(ReplicaUnavailable, match="'k'"):
            await store.get("k", _PROTO)

    async def test_missed_write_is_replayed_when_the_node_returns(self, replicated: Any) -> None:
        store, faults, _ = replicated(3, 3)
        await store.set("k", _buf(b"v1"))
        faults[0].down = True
        await store.set("k", _buf(b"v2"))
        faults[0].down = False
        assert (await store.get("k", _PROTO)).to_bytes() == b"v2"
        assert await store.replay_hints() == 1
        got = await store.nodes[0].read("k")
        assert got is not None and got[0] == b"v2"
