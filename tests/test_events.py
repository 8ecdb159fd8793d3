"""swarmstore events: routing to the scheduler's event log, thinning, and who emits what."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from swarmstore import _events
from swarmstore.compute import SwarmPlugin
from swarmstore.errors import QuorumError, ReplicaUnavailable, UnsatisfiableRequirements
from swarmstore.network import default_router, reset_default_router
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    _events._reset()


def events(s: Any, action: str | None = None) -> list[dict[str, Any]]:
    msgs = [msg for _, msg in s.get_events(_events.TOPIC)]
    return [m for m in msgs if action is None or m.get("action") == action]


def make_store(tmp_path: pathlib.Path, n: int = 3, replicas: int = 2, **kwargs: Any):
    faults = [Faults() for _ in range(n)]
    nodes = [
        FaultyStore(LocalStore(tmp_path / f"node{i}"), faults[i], name=f"node{i}") for i in range(n)
    ]
    store = ReplicatedStore(nodes, replicas=replicas, state_dir=tmp_path / "state", **kwargs)
    return store, faults


def buf(data: bytes) -> Any:
    return PROTO.buffer.from_bytes(data)


def prefer(router: Any, fast: Any, slow: Any) -> None:
    """Teach ``router`` that ``fast`` answers quickly, so reads try it first."""
    for _ in range(20):
        router.observe(fast.name, 0.0001, 1000)
        router.observe(slow.name, 0.5, 1000)


# --------------------------------------------------------------------------- plain parts
def test_plain_makes_messages_msgpack_safe() -> None:
    msg = _events.plain(
        {("k", 1): {"b", "a"}, "t": (1, 2.5, None), "raw": b"x", "obj": object, "n": np.int64(3)}
    )
    assert msg["('k', 1)"] == ["a", "b"] and msg["t"] == [1, 2.5, None] and msg["raw"] == "x"
    assert msg["obj"] == "<class 'object'>" and msg["n"] == "3"
    long = _events.plain(list(range(250)))
    assert len(long) == 101 and long[-1] == "... 150 more"
    deep: Any = "leaf"
    for _ in range(10):
        deep = [deep]
    assert isinstance(_events.plain(deep)[0][0][0][0][0], str)  # nesting is cut, not followed


def test_without_dask_an_event_is_only_logged() -> None:
    with captured_logger("swarmstore._events", level=20) as log:
        assert _events.emit("example", {"key": "x/c/0"}) is False
    assert "swarmstore event example" in log.getvalue() and "x/c/0" in log.getvalue()


def test_emit_never_raises() -> None:
    class Unserialisable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert _events.emit("broken", {"v": Unserialisable()}) is False
    assert _events.emit("no-such-server", {}, server=object()) is False


# --------------------------------------------------------------------------- routing
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_events_reach_the_scheduler_from_every_place(c, s, a, b) -> None:
    assert _events.emit("from-scheduler", {"n": 1}, server=s)
    assert _events.emit("found-scheduler", {"key": ("x", 1)})  # two workers here: the scheduler
    assert _events.emit("from-client", {}, server=c)

    def in_task() -> bool:
        return _events.emit("from-task", {"n": 2})

    assert await c.submit(in_task, workers=[b.address], pure=False)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_events.emit("from-thread", {}), done.set()))
    thread.start()
    thread.join(5)
    assert done.is_set()
    await async_poll_for(lambda: len(events(s)) == 5, timeout=5)
    by_action = {m["action"]: m for m in events(s)}
    assert by_action["found-scheduler"]["key"] == ["x", 1]
    assert by_action["from-task"]["worker"] == b.address
    assert "worker" not in by_action["from-scheduler"]
    assert all(m["host"] for m in by_action.values())


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_lone_worker_carries_events_from_other_threads(c, s, a) -> None:
    # storage code runs on zarr's I/O thread, where get_worker() does not answer
    thread = threading.Thread(target=_events.emit, args=("io-thread", {}))
    thread.start()
    thread.join(5)
    await async_poll_for(lambda: events(s, "io-thread"), timeout=5)
    assert events(s, "io-thread")[0]["worker"] == a.address


@gen_cluster(nthreads=[], config={"swarmstore.metrics.event-rate": 20})
async def test_a_flood_is_thinned_and_the_next_event_counts_what_was_dropped(s) -> None:
    sent = [_events.emit("flood", {"i": i}, server=s) for i in range(25)]
    assert sent.count(True) == 20 and _events.dropped["flood"] == 5
    await asyncio.sleep(0.1)  # two tokens back
    assert _events.emit("flood", {"i": 25}, server=s)
    last = events(s, "flood")[-1]
    assert last["i"] == 25 and last["suppressed"] == 5
    assert _events.emit("other", {}, server=s)  # each action has its own budget


@gen_cluster(nthreads=[], config={"swarmstore.metrics.events": False})
async def test_events_can_be_turned_off(s) -> None:
    assert _events.emit("quiet", {}, server=s) is False
    assert events(s) == []


# --------------------------------------------------------------------------- storage
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_storage_reports_repair_unavailable_quorum_and_hints(c, s, a, b) -> None:
    tmp_path = pathlib.Path(a.local_directory)
    store, faults = make_store(tmp_path, n=3, replicas=2)
    await store.set("k", buf(b"v1"))
    first, second = store.targets("k")
    (tmp_path / first.name / "k").unlink()  # one replica lost
    prefer(store.router, first, second)
    assert (await store.get("k", PROTO)).to_bytes() == b"v1"
    await store.flush()
    (repair,) = events(s, "read-repair")
    assert repair["key"] == "k" and repair["nodes"] == {first.name: "absent"}

    for f in faults:  # every node corrupts what it returns
        f.corrupt_reads.add("k")
    with pytest.raises(ReplicaUnavailable):
        await store.get("k", PROTO)
    (unavailable,) = events(s, "replica-unavailable")
    assert unavailable["key"] == "k" and "ChecksumMismatch" in unavailable["tried"][first.name]
    for f in faults:
        f.corrupt_reads.clear()

    for f in faults:
        f.down = True
    with pytest.raises(QuorumError):
        await store.set("k", buf(b"v2"))
    (missed,) = events(s, "quorum-missed")
    assert missed["key"] == "k" and missed["op"] == "set" and missed["acked"] == 0
    assert missed["needed"] == 2 and len(missed["failures"]) == 2

    for f in faults:
        f.down = False
    faults[int(first.name[-1])].down = True
    store.write_quorum = 1
    await store.set("k", buf(b"v3"))  # first is down: a hint for it
    faults[int(first.name[-1])].down = False
    assert await store.replay_hints() == 1
    await async_poll_for(lambda: events(s, "hints-replayed"), timeout=10)
    (replayed,) = events(s, "hints-replayed")
    assert {k: replayed[k] for k in ("action", "replayed", "pending")} == {
        "action": "hints-replayed",
        "replayed": 1,
        "pending": 0,
    }
    await store.aclose()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_hints_replayed_names_the_node_as_docs_metrics_says(c, s, a) -> None:
    tmp_path = pathlib.Path(a.local_directory)
    store, faults = make_store(tmp_path, n=2, replicas=2)
    store.write_quorum = 1
    faults[0].down = True
    await store.set("k", buf(b"v"))
    faults[0].down = False
    assert await store.replay_hints() == 1  # on the I/O loop: the event goes via the worker
    await async_poll_for(lambda: events(s, "hints-replayed"), timeout=10)
    (replayed,) = events(s, "hints-replayed")
    await store.aclose()
    assert {k: replayed.get(k) for k in ("node", "replayed", "pending")} == {
        "node": "node0",
        "replayed": 1,
        "pending": 0,
    }


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_read_repair_inside_a_task_names_its_worker(c, s, a) -> None:
    tmp_path = pathlib.Path(a.local_directory)
    store, _ = make_store(tmp_path, n=2, replicas=2)
    arr = await zarr.api.asynchronous.create_array(store, shape=(4,), chunks=(4,), dtype="i4")
    await arr.setitem(slice(None), np.arange(4))
    first, second = store.targets("c/0")
    (tmp_path / first.name / "c" / "0").unlink()
    reset_default_router()  # the router a store unpickled in a task uses
    prefer(default_router(), first, second)

    async def read(st: ReplicatedStore) -> list[int]:  # on the worker's event loop
        got = await zarr.api.asynchronous.open_array(store=st, mode="r")
        values = (await got.getitem(slice(None))).tolist()
        await st.flush()
        return values

    try:
        assert await c.submit(read, store, pure=False) == [0, 1, 2, 3]
    finally:
        reset_default_router()
    await async_poll_for(lambda: events(s, "read-repair"), timeout=5)
    (repair,) = events(s, "read-repair")
    assert repair["key"] == "c/0" and repair["worker"] == a.address


# --------------------------------------------------------------------------- compute
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)],
    config={"distributed.scheduler.active-memory-manager.interval": "50ms"},
)
async def test_lost_replicas_of_critical_keys_are_reported(c, s, a, b) -> None:
    await c.register_plugin(SwarmPlugin())
    (controller,) = s.plugins["swarmstore"].extensions
    with dask.annotate(swarm={"critical": True}):
        fut = c.submit(lambda: 1, workers=[a.address], pure=False)
    await fut
    await async_poll_for(lambda: len(s.tasks[fut.key].who_has) == 2, timeout=5)
    await a.close()
    await async_poll_for(lambda: events(s, "replicas-lost"), timeout=5)
    (lost,) = events(s, "replicas-lost")
    assert lost["worker"] == a.address and lost["under_replicated"] == 1
    assert controller.figures()["under_replicated"] == 1  # no third worker to copy to
    await b.close()
    await async_poll_for(lambda: events(s, "critical-key-lost"), timeout=5)
    (gone,) = events(s, "critical-key-lost")
    assert gone["key"] == fut.key and gone["replicas"] == 2
    assert controller.figures()["lost"] == 1


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"distributed.scheduler.active-memory-manager.interval": "50ms"},
)
async def test_releasing_a_critical_key_is_not_a_loss(c, s, a) -> None:
    await c.register_plugin(SwarmPlugin())
    (controller,) = s.plugins["swarmstore"].extensions
    with dask.annotate(swarm={"critical": True}):
        fut = c.submit(lambda: 1, pure=False)
    await fut
    key = fut.key
    del fut
    await async_poll_for(lambda: key not in s.tasks, timeout=5)
    assert controller.lost == 0 and events(s, "critical-key-lost") == []


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"swarmstore.compute.unsatisfiable-timeout": "100ms"},
)
async def test_unsatisfiable_events_keep_their_topic_and_are_counted(c, s, a) -> None:
    await c.register_plugin(SwarmPlugin())
    fut = c.submit(lambda: 1, resources={"GPU": 1}, pure=False)
    with pytest.raises(UnsatisfiableRequirements, match="needs resources"):
        await fut
    actions = [m["action"] for m in events(s)]
    assert "unsatisfiable-waiting" in actions and "unsatisfiable-failed" in actions
    counts = s.plugins["swarmstore"].placements
    assert (counts.unsatisfiable_waiting, counts.unsatisfiable_failed) == (1, 1)
    assert s.plugins["swarmstore-events"].counts["unsatisfiable-failed"] == 1


def test_a_bad_events_setting_is_named_once_and_never_breaks_the_caller(caplog) -> None:
    import dask.config

    with dask.config.set({"swarmstore.metrics.events": "off"}):
        with caplog.at_level("WARNING", logger="swarmstore._events"):
            assert _events.emit("example") is False
            assert _events.emit("example") is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "swarmstore.metrics.events must be true or false" in warnings[0].getMessage()
