import asyncio
import threading
import time

import dask.config
import pytest
from distributed.utils_test import async_poll_for
from zarr.core.sync import sync

import swarmstore
from swarmstore.errors import ConfigError
from swarmstore.network import Lanes, current_qos, qos

CLASSES = ["interactive", "normal", "bulk"]


def lanes(capacity=8, shares=None):
    return Lanes(capacity, CLASSES, shares or {"interactive": 0.25, "normal": 0.15, "bulk": 0.1})


def test_reserves_leave_the_lowest_class_room():
    assert lanes(8).reserved == {"interactive": 2, "normal": 1, "bulk": 1}
    assert lanes(64).reserved == {"interactive": 16, "normal": 9, "bulk": 6}
    # too small to give each class a slot and leave one free: plain floor
    assert lanes(2).reserved == {"interactive": 0, "normal": 0, "bulk": 0}
    assert lanes(None).reserved == dict.fromkeys(CLASSES, 0)


@pytest.mark.parametrize(
    "shares", [{"interactive": 0.6, "normal": 0.4}, {"bulk": -0.1}, {"urgent": 0.1}]
)
def test_bad_shares_are_refused(shares):
    with pytest.raises(ConfigError):
        Lanes(8, CLASSES, shares)


async def test_bulk_never_takes_the_interactive_reserve():
    ln = lanes(8)
    taken = 0
    while True:
        try:
            await asyncio.wait_for(ln.acquire("bulk"), 0.05)
        except TimeoutError:
            break
        taken += 1
    # 8 slots minus the unused reserves of interactive (2) and normal (1)
    assert taken == 5
    assert ln.figures()["bulk"]["queued"] == 0  # the timed-out waiter left the queue
    for _ in range(3):  # interactive gets every slot left, at once
        await asyncio.wait_for(ln.acquire("interactive"), 0.05)
    assert ln.busy() == 8


async def test_interactive_may_use_everything_when_alone():
    ln = lanes(8)
    for _ in range(8):
        await asyncio.wait_for(ln.acquire("interactive"), 0.05)
    assert ln.figures()["interactive"]["in_flight"] == 8


async def test_freed_slot_goes_to_classes_under_reserve_then_by_priority():
    ln = lanes(8)
    for _ in range(8):
        await ln.acquire("interactive")  # interactive over its reserve holds everything
    order = []

    async def want(cls):
        await ln.acquire(cls)
        order.append(cls)

    tasks = [asyncio.create_task(want(c)) for c in ["interactive", "bulk", "normal"]]
    await async_poll_for(lambda: ln.queued() == 3, timeout=30, period=0.001)
    assert not order
    for i in range(3):
        ln.release("interactive")
        await async_poll_for(lambda i=i: len(order) == i + 1, timeout=30, period=0.001)
    # normal and bulk are below their reserves, interactive is not
    assert order == ["normal", "bulk", "interactive"]
    await asyncio.gather(*tasks)


async def test_fifo_within_a_class_and_cancelled_waiters_leave():
    ln = Lanes(1, ["all"])
    await ln.acquire("all")
    got = []

    async def want(i):
        async with ln.slot("all"):
            got.append(i)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(want(i)) for i in range(4)]
    await async_poll_for(lambda: ln.queued() == 4, timeout=30, period=0.001)
    tasks[1].cancel()
    ln.release("all")
    await asyncio.gather(*tasks, return_exceptions=True)
    assert got == [0, 2, 3]
    assert ln.busy() == 0 and ln.queued() == 0


async def test_release_without_acquire_is_an_error():
    with pytest.raises(RuntimeError, match="never acquired"):
        lanes().release("bulk")
    with pytest.raises(ConfigError, match="unknown QoS class"):
        await lanes().acquire("urgent")


def test_lanes_serve_waiters_on_other_event_loops():
    """One Lanes shared by two threads' loops (a worker's loop and zarr's I/O loop)."""
    ln = Lanes(1, ["all"])
    held = threading.Event()
    release = threading.Event()

    async def holder():
        await ln.acquire("all")
        held.set()
        await asyncio.to_thread(release.wait, 5)
        ln.release("all")

    t = threading.Thread(target=asyncio.run, args=(holder(),))
    t.start()
    assert held.wait(5)

    async def waiter():
        task = asyncio.ensure_future(ln.acquire("all"))
        await async_poll_for(lambda: ln.queued() == 1, timeout=30, period=0.001)
        assert not task.done()  # the slot is held on the other loop
        release.set()
        await asyncio.wait_for(task, 5)
        ln.release("all")

    asyncio.run(waiter())
    t.join(5)
    assert ln.busy() == 0


def test_qos_context_manager_nests_and_restores():
    assert current_qos() == "normal"
    with swarmstore.qos("bulk"):
        assert current_qos() == "bulk"
        with qos("interactive"):
            assert current_qos() == "interactive"
        assert current_qos() == "bulk"
    assert current_qos() == "normal"
    with pytest.raises(ConfigError, match="unknown QoS class 'urgent'"):
        with qos("urgent"):
            pass


def test_qos_default_and_classes_come_from_config():
    with dask.config.set(
        {"swarmstore.network.qos-default": "bulk", "swarmstore.network.qos-classes": ["hi", "bulk"]}
    ):
        assert current_qos() == "bulk"
        with qos("hi"):
            assert current_qos() == "hi"


async def test_qos_follows_tasks():
    async def inner():
        return current_qos()

    with qos("bulk"):
        task = asyncio.create_task(inner())
    assert await task == "bulk"


def test_qos_follows_zarr_sync_into_its_io_loop():
    """zarr's sync API runs coroutines on its own loop thread; the class must travel along."""

    async def inner():
        return current_qos(), threading.current_thread()

    with qos("bulk"):
        cls, thread = sync(inner())
    assert cls == "bulk" and thread is not threading.current_thread()


def test_try_acquire_takes_a_free_slot_at_once_and_keeps_the_reserves():
    ln = lanes(8)  # reserves: interactive 2, normal 1, bulk 1
    assert all(ln.try_acquire("bulk") for _ in range(5))
    assert not ln.try_acquire("bulk")  # 3 free, all held for interactive and normal
    assert ln.would_queue("bulk") == 1 and ln.would_queue("interactive") == 0
    assert ln.try_acquire("normal") and not ln.try_acquire("normal")
    assert ln.try_acquire("interactive") and ln.try_acquire("interactive")
    assert not ln.try_acquire("interactive") and ln.busy() == 8
    assert ln.figures()["bulk"] == {"in_flight": 5, "queued": 0, "reserved": 1, "granted": 5}
    with pytest.raises(ConfigError, match="unknown QoS class"):
        ln.try_acquire("urgent")
    assert Lanes(None, CLASSES).try_acquire("bulk")


async def test_try_acquire_never_jumps_the_queue():
    ln = Lanes(2, ["all"])
    assert ln.try_acquire("all") and ln.try_acquire("all")
    waiter = asyncio.create_task(ln.acquire("all"))
    await async_poll_for(lambda: ln.queued() == 1, timeout=30, period=0.001)
    assert ln.would_queue("all") == 2
    ln.release("all")  # the slot goes to the waiter, not to a newcomer
    assert not ln.try_acquire("all")
    await waiter
    assert ln.busy() == 2 and ln.queued() == 0


def test_the_lowest_class_yields_while_a_higher_one_is_active():
    ln = Lanes(16, CLASSES, {"interactive": 0.25, "normal": 0.15, "bulk": 0.1}, {"bulk": 0.125}, 0)
    assert ln.limits == {"bulk": 2}
    assert ln.try_acquire("interactive")
    assert ln.try_acquire("bulk") and ln.try_acquire("bulk")
    assert not ln.try_acquire("bulk")  # 13 slots free, but interactive is active here
    assert ln.would_queue("bulk") == 1
    ln.release("interactive")  # quiet again (window 0): bulk has its whole budget back
    assert sum(ln.try_acquire("bulk") for _ in range(20)) == 8  # 10 in all, as without yield


async def test_yielded_waiters_go_once_the_higher_class_is_quiet():
    ln = Lanes(16, CLASSES, {"interactive": 0.25}, {"bulk": 0.125}, window=0.05)
    assert ln.try_acquire("interactive") and ln.try_acquire("bulk") and ln.try_acquire("bulk")
    waiting = [asyncio.ensure_future(ln.acquire("bulk")) for _ in range(3)]
    await async_poll_for(lambda: ln.queued() == 3, timeout=30, period=0.001)
    ln.release("interactive")  # quiet, but recently active: bulk still yields
    t_quiet = time.monotonic()
    await async_poll_for(lambda: time.monotonic() > t_quiet + 0.05, timeout=30, period=0.01)
    ln.release("bulk")  # the window is over: this one release lets every waiter in
    await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert ln.figures()["bulk"]["in_flight"] == 4
    with pytest.raises(ConfigError, match="yields"):
        Lanes(8, CLASSES, None, {"bulk": 1.5})


async def test_a_paced_class_holds_no_more_than_its_limit_whatever_is_active():
    ln = Lanes(16, CLASSES, {"interactive": 0.25}, {"bulk": 0.125}, 0)
    ln.pace(3)
    assert sum(ln.try_acquire("bulk") for _ in range(10)) == 3  # nothing higher active
    assert ln.would_queue("bulk") == 1 and ln.try_acquire("normal")  # others unpaced
    ln.release("normal")  # (a higher class active makes bulk yield: not what this tests)
    waiter = asyncio.ensure_future(ln.acquire("bulk"))
    await async_poll_for(lambda: ln.queued("bulk") == 1, timeout=30, period=0.001)
    ln.pace(4)  # a higher limit lets the waiter in at once
    await asyncio.wait_for(waiter, 30)
    assert ln.figures()["bulk"]["in_flight"] == 4
    ln.pace(0)  # never below one
    assert ln.caps == {"bulk": 1}


async def test_bulk_reads_that_queue_at_a_source_are_paced_down():
    """A source where every request in flight slows every other (a full link): the bulk
    class's limit comes down from all 16 slots, so few bulk reads stay in flight there
    (counted at the source)."""
    from swarmstore.network import TransferRouter

    state = {"now": 0, "most": 0}

    async def attempt(src: str) -> bytes:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await asyncio.sleep(0.01 * state["now"])  # each one in flight adds 10 ms
        finally:
            state["now"] -= 1
        return b"x" * 1024

    router = TransferRouter(hedge=False, probe_interval=None)
    with qos("bulk"):
        await asyncio.gather(*(router.fetch(["link"], attempt, name=str) for _ in range(8)))
        source = router.registry.entry("link")
        assert source.pacer is not None
        source.pacer.limit = 16  # as if it had grown: the whole budget
        source.lanes.pace(16)
        await asyncio.gather(*(router.fetch(["link"], attempt, name=str) for _ in range(64)))
        state["most"] = 0
        await asyncio.gather(*(router.fetch(["link"], attempt, name=str) for _ in range(64)))
    assert router.figures()["sources"]["link"]["paced_limit"] <= 4
    assert state["most"] <= 4
