"""The router under a real ReplicatedStore: zarr reads and writes through FaultyStore nodes."""

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.network import TransferRouter, qos
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()


def make(tmp_path, *, hosts=(None, None, None), replicas=3, **router_kwargs):
    faults = [Faults(seed=i) for i in range(3)]
    nodes = [
        NodeSpec(FaultyStore(MemoryStore(), faults[i], name=f"node{i}"), name=f"node{i}", host=h)
        for i, h in enumerate(hosts)
    ]
    router_kwargs.setdefault("host", "reader-host")
    router_kwargs.setdefault("hedge", False)
    router = TransferRouter(**router_kwargs)
    store = ReplicatedStore(nodes, replicas=replicas, state_dir=tmp_path / "state", router=router)
    return store, faults, router


async def write_array(store, n_chunks=8):
    arr = await zarr.api.asynchronous.create_array(
        store, shape=(n_chunks * 10,), chunks=(10,), dtype="i4", fill_value=0
    )
    await arr.setitem(slice(None), np.arange(n_chunks * 10, dtype="i4"))
    return arr


async def test_reads_go_to_the_fastest_replica(tmp_path):
    store, faults, router = make(tmp_path)
    arr = await write_array(store)
    faults[0].latency = 0.03
    faults[2].latency = 0.01
    for _ in range(3):  # every replica gets measured
        np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(80))
    before = [f.counts.get("get", 0) for f in faults]
    for _ in range(5):
        np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(80))
    gets = [f.counts.get("get", 0) - b for f, b in zip(faults, before, strict=True)]
    assert gets[1] >= 0.8 * sum(gets), gets
    assert router.order(store.nodes, lambda n: n.name)[0].name == "node1"


async def test_same_host_replica_is_preferred(tmp_path):
    store, faults, _router = make(tmp_path, hosts=("other", "reader-host", "other"))
    arr = await write_array(store)
    before = [f.counts.get("get", 0) for f in faults]
    for _ in range(3):
        await arr.getitem(slice(None))
    gets = [f.counts.get("get", 0) - b for f, b in zip(faults, before, strict=True)]
    assert gets[0] == gets[2] == 0 and gets[1] > 0


async def test_down_node_opens_its_circuit_and_reads_skip_it(tmp_path):
    store, faults, router = make(tmp_path, circuit_failures=2, circuit_reset=60)
    arr = await write_array(store)
    for _ in range(3):
        await arr.getitem(slice(None))
    best = router.order(store.nodes, lambda n: n.name)[0].name
    i = int(best[-1])
    faults[i].down = True
    np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(80))
    assert router.figures()["sources"][best]["circuit"] == "open"
    tried = faults[i].counts["get"]
    np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(80))
    assert faults[i].counts["get"] == tried


async def test_read_repair_travels_in_the_bulk_lane(tmp_path):
    store, faults, router = make(tmp_path, replicas=2)
    await store.set("k", PROTO.buffer.from_bytes(b"x" * 100))
    first = router.order(store.targets("k"), lambda n: n.name)[0]
    faults[store.nodes.index(first)].corrupt_reads = {"k"}  # in flight: the read fails over
    bulk_before = router.figures()["classes"]["bulk"]["granted"]
    with qos("interactive"):
        got = await store.get("k", PROTO)
    await store.flush()
    assert got.to_bytes() == b"x" * 100
    classes = router.figures()["classes"]
    assert classes["interactive"]["granted"] >= 1
    assert classes["bulk"]["granted"] > bulk_before  # the repair write of the corrupt replica


async def test_hint_replay_travels_in_the_bulk_lane(tmp_path):
    store, faults, router = make(tmp_path, replicas=3)
    faults[0].down = True
    await store.set("k", PROTO.buffer.from_bytes(b"y" * 10))
    faults[0].down = False
    router.circuits.clear()
    before = router.figures()["classes"]["bulk"]["granted"]
    assert await store.replay_hints() == 1
    assert router.figures()["classes"]["bulk"]["granted"] > before


def test_zarr_sync_api_carries_the_qos_class(tmp_path):
    """zarr's sync facade runs on its own I/O thread; the class still reaches the router."""
    store, _, router = make(tmp_path)
    z = zarr.create_array(store, shape=(40,), chunks=(10,), dtype="i4")
    with qos("bulk"):
        z[:] = np.arange(40)
    writes = router.figures()["classes"]["bulk"]["granted"]
    assert writes >= 4 * 3  # 4 chunks x 3 replicas
    with qos("interactive"):
        np.testing.assert_array_equal(z[:], np.arange(40))
    assert router.figures()["classes"]["interactive"]["granted"] >= 4


async def test_missing_replica_is_not_a_health_failure(tmp_path):
    store, _faults, router = make(tmp_path, replicas=2, circuit_failures=1)
    await store.set("k", PROTO.buffer.from_bytes(b"z" * 10))
    first = router.order(store.targets("k"), lambda n: n.name)[0]
    await first.store.delete("k")  # lost behind the store's back: that replica lacks the key
    got = await store.get("k", PROTO)
    assert got.to_bytes() == b"z" * 10
    figs = router.figures()["sources"][first.name]
    assert figs["missing"] == 1 and figs["failures"] == 0 and figs["circuit"] == "closed"
    await store.flush()  # read repair put it back
    assert await first.store.exists("k")


async def test_a_read_only_store_teaches_the_router_each_reads_bytes(tmp_path):
    """Issue 15: a process that only reads (every Dask worker) must learn bandwidth, so each
    read's bytes reach the cost model, in the size class of what it moved."""
    store, _faults, _ = make(tmp_path)
    small = await zarr.api.asynchronous.create_array(
        store, name="small", shape=(1024,), chunks=(1024,), dtype="i4", fill_value=0
    )
    big = await zarr.api.asynchronous.create_array(
        store, name="big", shape=(2**18,), chunks=(2**18,), dtype="i4", fill_value=0,
        compressors=None,
    )  # fmt: skip
    await small.setitem(slice(None), np.arange(1024, dtype="i4"))
    await big.setitem(slice(None), np.arange(2**18, dtype="i4"))
    reader = TransferRouter(host="reader-host", hedge=False, probe=False)
    ro = ReplicatedStore(store.nodes, replicas=3, state_dir=tmp_path / "ro", router=reader)
    for _ in range(6):
        for name, n in (("small", 1024), ("big", 2**18)):
            arr = await zarr.api.asynchronous.open_array(store=ro, path=name)
            np.testing.assert_array_equal(await arr.getitem(slice(None)), np.arange(n))
    served = [st for st in reader.sources.values() if len(st.classes) > 1]
    assert served, {nm: sorted(st.classes) for nm, st in reader.sources.items()}
    st = served[0]
    assert st.classes[0].nbytes < 64 * 1024 <= 2**20 <= st.classes[max(st.classes)].nbytes
