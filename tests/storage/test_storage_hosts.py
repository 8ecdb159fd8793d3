"""One truth on every host (issue 12): writers and readers in separate host processes, each
with its own state dir and a skewed clock, reaching three S3 nodes (moto servers in their
own processes) through their own proxy links.

Each guarantee gets a test: no read older than an acknowledged write (chunks and
``zarr.json``, after an outage during the overwrite), acknowledged deletes stay deleted,
hints outlive their coordinator, no wall clock orders writes, conditional creates agree.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing.hosts import HostBed, current_host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OFFSETS = [0.0, 120.0, -300.0, 45.0]  # seconds: hosts disagree by minutes
PROTO = default_buffer_prototype()


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    with HostBed(tmp_path_factory.mktemp("bed"), hosts=4, nodes=3, clock_offsets=OFFSETS) as b:
        yield b


@pytest.fixture
def prefix(bed):
    yield f"t-{uuid.uuid4().hex[:8]}"
    for row in bed._links:
        for p in row:
            p.clear()


# --- what runs inside a host ---------------------------------------------------------------
_STORES: dict[str, ReplicatedStore] = {}


def store_here(prefix: str, *, fresh: bool = False) -> ReplicatedStore:
    """This host's view of the store: its own links, its own state dir, its own writer id
    (kept per host process, so its S3 clients on zarr's I/O loop are made once)."""
    if not fresh and prefix in _STORES:
        return _STORES[prefix]
    h = current_host()
    nodes = [
        NodeSpec(f"s3://{h.bucket}/{prefix}", name=name, storage_options=h.storage_options(j))
        for j, name in enumerate(h.node_names)
    ]
    if prefix.startswith("coded-"):  # chunks erasure-coded RS(2,1), zarr.json replicated
        kw: dict[str, Any] = {"coding": {"c/": (2, 1)}}
    else:
        kw = {}
    store = ReplicatedStore(nodes, replicas=3, write_quorum=2, state_dir=h.state_dir, **kw)
    if not fresh:
        _STORES[prefix] = store
    return store


def on_io_loop(coro: Any) -> Any:
    from swarmstore import _sync

    return _sync.run(coro)


def write_array(prefix: str, value: int, shape: tuple[int, int], title: str) -> None:
    store = store_here(prefix)
    arr = zarr.open_array(store, mode="a", shape=shape, chunks=(8, 8), dtype="i4", fill_value=0)
    if arr.shape != shape:
        arr.resize(shape)
    arr[:] = value
    arr.attrs["title"] = title
    store.flush_sync()


def read_array(prefix: str) -> dict:
    store = store_here(prefix, fresh=True)  # a reader that never saw this array
    arr = zarr.open_array(store, mode="r")
    data = arr[:]
    return {"shape": arr.shape, "values": sorted(set(np.unique(data).tolist())), **arr.attrs}


def raw_json(prefix: str, node: int) -> dict:
    import json

    h = current_host()
    return json.loads(h.filesystem(node).cat(f"{h.bucket}/{prefix}/zarr.json"))


def put(prefix: str, key: str, value: bytes | None) -> None:
    store = store_here(prefix)
    if value is None:
        on_io_loop(store.delete(key))
    else:
        on_io_loop(store.set(key, PROTO.buffer.from_bytes(value)))
    store.flush_sync()


def get(prefix: str, key: str) -> bytes | None:
    store = store_here(prefix)
    got = on_io_loop(store.get(key, PROTO))
    store.flush_sync()
    return None if got is None else got.to_bytes()


def create(prefix: str, key: str, value: bytes) -> bytes:
    store = store_here(prefix)
    on_io_loop(store.set_if_not_exists(key, PROTO.buffer.from_bytes(value)))
    return on_io_loop(store.get(key, PROTO)).to_bytes()


def replay(prefix: str) -> int:
    return store_here(prefix).replay_hints_sync()


def repair(prefix: str) -> dict:
    return store_here(prefix).repair_sync().as_dict()


def raw_record(prefix: str, node: int, key: str) -> str | None:
    """The record node ``node`` holds for ``key`` (None: no object), read past swarmstore."""
    h = current_host()
    try:
        head = h.filesystem(node).call_s3("head_object", Bucket=h.bucket, Key=f"{prefix}/{key}")
    except FileNotFoundError:
        return None
    return head["Metadata"].get("swarmstore-xxh3")


def wipe_chunks(prefix: str, node: int) -> int:
    """Delete every chunk object node ``node`` holds, past swarmstore (a replaced disk)."""
    h = current_host()
    fs = h.filesystem(node)
    paths = fs.find(f"{h.bucket}/{prefix}/c/")
    fs.rm(paths)
    return len(paths)


def chunk_keys(prefix: str) -> list[str]:
    store = store_here(prefix, fresh=True)

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix("c/")]

    return on_io_loop(keys())


def metadata_objects(prefix: str, node: int) -> list[str]:
    h = current_host()
    return h.filesystem(node).find(f"{h.bucket}/{prefix}/.swarmstore")


# --- the guarantees -------------------------------------------------------------------------
def test_no_reader_on_any_host_sees_an_overwrite_it_missed(bed, prefix):
    """The issue's experiment: host 0 overwrites every chunk and resizes the array while it
    cannot reach node 2; node 2 comes back; three fresh reader hosts see only the new
    chunks and the new zarr.json (206 stale chunks before)."""
    bed.host(0).run(write_array, prefix, 1, (32, 32), "first")
    bed.link(0, 2).kill()
    bed.host(0).run(write_array, prefix, 2, (40, 32), "second")
    bed.link(0, 2).revive()
    assert bed.host(1).run(raw_json, prefix, 2)["shape"] == [32, 32]  # node 2 is stale
    for reader in (1, 2, 3):
        seen = bed.host(reader).run(read_array, prefix)
        assert seen["shape"] == (40, 32), (reader, seen)
        assert seen["values"] == [2] and seen["title"] == "second", (reader, seen)


def test_an_acknowledged_delete_stays_deleted_on_every_host(bed, prefix):
    bed.host(0).run(put, prefix, "k", b"old")
    bed.link(0, 1).kill()
    bed.host(0).run(put, prefix, "k", None)
    bed.link(0, 1).revive()
    for reader in (1, 2, 3):
        assert bed.host(reader).run(get, prefix, "k") is None
    report = bed.host(2).run(repair, prefix)
    assert report["ok"], report
    assert bed.host(3).run(get, prefix, "k") is None
    assert bed.host(3).run(raw_record, prefix, 1, "k") is None  # the missed delete applied


def test_hints_outlive_their_coordinator(bed, prefix):
    """Host 0 writes while node 2 is out of its reach and never replays (it is gone);
    host 1's replay_hints finds the hints on the nodes and brings node 2 up to date."""
    bed.host(0).run(put, prefix, "h", b"v1")
    bed.link(0, 2).kill()
    bed.host(0).run(put, prefix, "h", b"v2")
    assert bed.host(1).run(metadata_objects, prefix, 0)  # the hint, on an acknowledging node
    assert bed.host(1).run(replay, prefix) >= 1
    records = [bed.host(1).run(raw_record, prefix, j, "h") for j in range(3)]
    assert records[0] is not None and len(set(records)) == 1  # node 2 caught up
    assert not any(bed.host(1).run(metadata_objects, prefix, j) for j in range(3))


def test_no_wall_clock_orders_writes(bed, prefix):
    """Host 1's clock is 7 minutes ahead of host 2's; host 2's later write still wins."""
    bed.host(1).run(put, prefix, "c", b"from host1 (clock +120 s)")
    bed.host(2).run(put, prefix, "c", b"from host2 (clock -300 s)")
    for reader in (0, 3):
        assert bed.host(reader).run(get, prefix, "c") == b"from host2 (clock -300 s)"


def test_conditional_creates_on_three_hosts_agree(bed, prefix):
    futures = [bed.host(i).submit(create, prefix, "m", f"host{i}".encode()) for i in range(3)]
    winners = {f.result(timeout=120) for f in futures}
    assert len(winners) == 1
    assert bed.host(3).run(get, prefix, "m") == winners.pop()


def test_a_read_on_another_loop_than_the_writes(bed, prefix):
    """zarr's sync API writes on its I/O loop; asyncio.run reads and scrubs on another
    (issue 14: "Future attached to a different loop")."""
    bed.host(0).run(write_array, prefix, 5, (16, 16), "loops")

    async def scrub_here(prefix: str) -> bool:
        store = store_here(prefix, fresh=True)
        zarr.open_array(store, mode="r")[:]  # sessions on the I/O loop
        report = await store.scrub()  # awaited on asyncio.run's loop
        await store.aclose()
        return report.ok

    assert bed.host(0).run(scrub_here, prefix)  # the host runs it with asyncio.run


def test_coded_chunks_hold_one_truth_on_every_host(bed):
    """Issue 20's cross-host rule on the bed: chunks RS(2,1) over the three S3 nodes. Host 0
    writes, host 2 (clock 5 minutes behind) overwrites, node 0 then loses every fragment it
    held (objects deleted past swarmstore: one loss, within m). Fresh readers on the other
    hosts see only the overwrite: no old chunk, no fill value where a chunk is held (a
    reader whose first answer came from node 0 used to read it as absent), the listing
    keeps every chunk, and a repair from a fourth host restores node 0."""
    prefix = f"coded-{uuid.uuid4().hex[:8]}"
    bed.host(0).run(write_array, prefix, 1, (32, 32), "first")
    bed.host(2).run(write_array, prefix, 2, (32, 32), "second")
    assert bed.host(1).run(wipe_chunks, prefix, 0) == 16
    for reader in (1, 3):
        seen = bed.host(reader).run(read_array, prefix)
        assert seen["values"] == [2] and seen["title"] == "second", (reader, seen)
    assert len(bed.host(1).run(chunk_keys, prefix)) == 16
    report = bed.host(3).run(repair, prefix)  # (readers may have repaired some already)
    assert report["ok"], report
    keys = [f"c/{i}/{j}" for i in range(4) for j in range(4)]
    assert all(bed.host(0).run(raw_record, prefix, 0, k) is not None for k in keys)
