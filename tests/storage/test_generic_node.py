"""Any zarr store as a node (issue 16): WrapperStore chains and FsspecStores over other
filesystems become StoreNodes, with records in sidecars. The replica contract and zarr's
StoreTests run over them; a write caught mid-way, or crashed between any two of its steps,
is never read as rot nor makes a node look newer than its bytes."""

from __future__ import annotations

import asyncio
import pickle
import uuid

import fsspec
import numpy as np
import pytest
import zarr
from test_contract_replicas import _build
from test_replicated_storetests import _Backdoor
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore
from zarr.testing.store import StoreTests

from swarmstore.errors import ConfigError
from swarmstore.storage import Record, ReplicatedStore, StoreNode, node_from, scrub
from swarmstore.storage._generic import _sidecar
from swarmstore.testing import flip_byte
from swarmstore.testing.contracts import ReplicaContractTests

PROTO = default_buffer_prototype()


def _buf(data: bytes):
    return PROTO.buffer.from_bytes(data)


def _memory_store(tag: str) -> FsspecStore:
    """An FsspecStore over fsspec's in-memory filesystem: "another fsspec filesystem"."""
    return FsspecStore.from_url(f"memory://generic-{tag}")


class TestWrapperNodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path):
        def make(n, replicas, **kwargs):
            dirs = [tmp_path / uuid.uuid4().hex for _ in range(n)]
            stores = [WrapperStore(LocalStore(d)) for d in dirs]
            store, faults = _build(stores, tmp_path, replicas, **kwargs)

            def rot(i, key):
                path = dirs[i] / key
                path.write_bytes(flip_byte(path.read_bytes()))

            return store, faults, rot

        return make


class TestFsspecMemoryNodes(ReplicaContractTests):
    @pytest.fixture
    def replicated(self, tmp_path):
        def make(n, replicas, **kwargs):
            tags = [uuid.uuid4().hex for _ in range(n)]
            stores = [_memory_store(t) for t in tags]
            store, faults = _build(stores, tmp_path, replicas, **kwargs)
            fs = fsspec.filesystem("memory")

            def rot(i, key):
                path = f"/generic-{tags[i]}/{key}"
                fs.pipe_file(path, flip_byte(fs.cat_file(path)))

            return store, faults, rot

        return make


class TestReplicatedOverGenericNodes(_Backdoor, StoreTests[ReplicatedStore, cpu.Buffer]):
    """zarr's own contract: two wrapper nodes and two fsspec-memory nodes, three replicas."""

    store_cls = ReplicatedStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        tag = uuid.uuid4().hex
        nodes = [
            WrapperStore(LocalStore(tmp_path / "a")),
            WrapperStore(WrapperStore(LocalStore(tmp_path / "b"))),
            _memory_store(f"{tag}-c"),
            _memory_store(f"{tag}-d"),
        ]
        return {"nodes": nodes, "replicas": 3, "state_dir": str(tmp_path / "state")}


# -- a write in flight, and a write crashed between its steps -------------------------------


class Gate(WrapperStore):
    """Parks the ``n``-th ``set`` after it lands until released (a write caught mid-way);
    with ``crash=True`` the parked call raises instead (a writer killed there)."""

    def __init__(self, store, n: int, crash: bool = False) -> None:
        super().__init__(store)
        self.n, self.crash, self.sets = n, crash, 0
        self.parked, self.go = asyncio.Event(), asyncio.Event()

    async def set(self, key, value) -> None:
        await self._store.set(key, value)
        self.sets += 1
        if self.sets == self.n:
            self.parked.set()
            if self.crash:
                raise ConnectionResetError("the writer died here")
            await self.go.wait()


async def _node_with(tmp_path, value: bytes, gate_at: int, crash: bool):
    gate = Gate(LocalStore(tmp_path / "node"), n=10**9, crash=crash)
    node = StoreNode(gate, name="g")
    await node.write("k", value, Record.of(value, version=(1, 1)))
    gate.n, gate.sets = gate_at, 0
    return node, gate


async def _commit(node, data: bytes, version) -> str:
    pending = await node.prepare("k", data)
    return await node.commit(pending, Record.of(data, version=version))


@pytest.mark.parametrize("step", [1, 2, 3], ids=["intent", "data", "record"])
async def test_a_read_mid_write_verifies_against_a_record_the_bytes_match(tmp_path, step):
    """After each of the three writes of a commit: the bytes read verify against the record
    returned with them (never rot), and ``state`` is never newer than the bytes."""
    old, new = b"old" * 100, b"new!" * 100
    node, gate = await _node_with(tmp_path, old, step, crash=False)
    writing = asyncio.ensure_future(_commit(node, new, (2, 1)))
    await asyncio.wait_for(gate.parked.wait(), 30)
    got = await node.read("k")
    got.record.verify(got.data)  # raises on a mismatch
    state = await node.state("k")
    assert state.record.version <= got.record.version
    assert got.data == (old if step == 1 else new)
    gate.go.set()
    assert await writing == "written"
    done = await node.read("k")
    assert done.data == new and done.record.version == (2, 1)


@pytest.mark.parametrize("step", [1, 2, 3], ids=["intent", "data", "record"])
async def test_a_writer_killed_between_steps_leaves_a_node_that_looks_behind(tmp_path, step):
    old, new = b"old" * 100, b"new!" * 100
    node, _ = await _node_with(tmp_path, old, step, crash=True)
    with pytest.raises(ConnectionResetError):
        await _commit(node, new, (2, 1))
    got = await node.read("k")
    got.record.verify(got.data)
    assert got.data == (old if step == 1 else new)
    assert (await node.state("k")).record.version <= got.record.version
    assert await _commit(node, new + b"2", (3, 1)) == "written"  # the next write heals it
    again = await node.read("k")
    assert again.data == new + b"2" and again.record.version == (3, 1)


async def test_a_repairing_reader_during_a_write_never_undoes_it(tmp_path):
    """Two replicas are written while readers read (and would repair) between every step:
    the write stays whole on both (with data first and the record after, a repair in the
    window put old bytes under the new record, and both replicas read as rot)."""
    gates = [Gate(LocalStore(tmp_path / f"n{i}"), n=10**9) for i in range(2)]
    store = ReplicatedStore(
        [StoreNode(g, name=f"n{i}") for i, g in enumerate(gates)],
        replicas=2,
        state_dir=tmp_path / "state",
    )
    await store.set("k", _buf(b"v1" * 50))
    for step in (1, 2):
        for g in gates:
            g.n, g.sets, g.parked, g.go = step, 0, asyncio.Event(), asyncio.Event()
        writing = asyncio.ensure_future(store.set("k", _buf(b"v2" * 50)))
        await asyncio.wait_for(asyncio.gather(*(g.parked.wait() for g in gates)), 30)
        got = (await store.get("k", PROTO)).to_bytes()
        assert got in (b"v1" * 50, b"v2" * 50)
        for g in gates:
            g.n = 10**9
            g.go.set()
        await writing
        assert (await store.get("k", PROTO)).to_bytes() == b"v2" * 50
        await store.set("k", _buf(b"v1" * 50))
    report = await scrub(store)
    assert not report.corrupt
    await store.aclose()


# -- building, naming, reading with plain zarr ----------------------------------------------


def test_any_zarr_store_is_a_node_and_its_data_opens_with_plain_zarr(tmp_path):
    stores = [WrapperStore(LocalStore(tmp_path / f"n{i}")) for i in range(2)]
    store = ReplicatedStore(stores, replicas=2, state_dir=tmp_path / "state")
    assert all(isinstance(n, StoreNode) for n in store.nodes)
    zarr.create_array(store, shape=(8,), chunks=(4,), dtype="i4")[:] = np.arange(8)
    plain = zarr.open_array(LocalStore(tmp_path / "n0"), mode="r")
    assert (plain[:] == np.arange(8)).all()
    assert sorted(p.name for p in (tmp_path / "n0").iterdir()) == [".swarmstore", "c", "zarr.json"]
    assert (tmp_path / "n0" / _sidecar("c/0")).is_file()


def test_node_names_are_the_same_in_every_process(tmp_path):
    node = node_from(WrapperStore(LocalStore(tmp_path)))
    assert node.name == f"wrapping-file://{tmp_path}"
    assert node_from(_memory_store("names")).name == "memory://generic-names"
    again = pickle.loads(pickle.dumps(node))
    assert again.name == node.name and again.store._store.root == node.store._store.root


def test_stores_that_cannot_be_nodes_say_why(tmp_path):
    inner = ReplicatedStore([f"file://{tmp_path}/a"], replicas=1, state_dir=tmp_path / "s")
    with pytest.raises(ConfigError, match="give the stores beneath it"):
        node_from(inner)
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp'"):
        node_from("ftp://host/x")
    with pytest.raises(ConfigError, match="cannot use 42 as a storage node"):
        node_from(42)


def test_an_object_store_url_without_its_package_is_a_config_error():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="gs:// needs a package"):
            node_from("gs://bucket/prefix")
    else:  # pragma: no cover - gcsfs installed: it becomes a generic node
        assert isinstance(node_from("gs://bucket/prefix", token="anon"), StoreNode)


async def test_a_stripped_or_swapped_sidecar_reads_as_rot_and_is_repaired(tmp_path):
    stores = [WrapperStore(LocalStore(tmp_path / f"n{i}")) for i in range(2)]
    store = ReplicatedStore(stores, replicas=2, state_dir=tmp_path / "state")
    await store.set("a", _buf(b"A" * 64))
    await store.set("b", _buf(b"B" * 64))
    n0 = tmp_path / "n0"
    (n0 / _sidecar("a")).write_bytes((n0 / _sidecar("b")).read_bytes())  # swapped
    (n0 / _sidecar("b")).unlink()  # stripped: the bytes read as unrecorded, not verified
    assert (await store.get("a", PROTO)).to_bytes() == b"A" * 64
    assert (await store.get("b", PROTO)).to_bytes() == b"B" * 64
    await store.repair()
    for key, value in (("a", b"A" * 64), ("b", b"B" * 64)):
        got = await store.nodes[0].read(key)
        assert got.data == value and got.record is not None
        got.record.verify(got.data)
    await store.aclose()
