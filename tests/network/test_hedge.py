"""Hedged fetches: the first attempt runs in the caller's task, the hedge in a task of its own.

These pin down the asyncio side: who is cancelled and awaited, that a hedge's win never
leaks a cancellation into the caller, that a cancellation from outside always wins, that
failures on either side are reported, and that nothing is left running or unretrieved.
"""

import asyncio
import gc
import threading
import weakref

import pytest
from distributed.utils_test import async_poll_for
from netsupport import Script, make_sources, name, reader

from swarmstore.errors import ChecksumMismatch, NodeUnavailable
from swarmstore.network import TransferRouter, qos
from swarmstore.network._hedge import Watch


async def hedging_router(sources, **kwargs):
    """A router that has learned n0 answers in ~1 ms, and earns a hedge token per fetch."""
    kwargs.setdefault("host", "here")
    kwargs.setdefault("hedge_budget", 1.0)
    kwargs.setdefault("probe", False)
    r = TransferRouter(hedge=True, hedge_min_samples=5, **kwargs)
    for _ in range(30):
        r.observe("n0", 0.001)
        for s in sources[1:]:
            r.observe(s.name, 0.01)
    assert r.order(sources, name)[0] is sources[0]
    return r


async def until(predicate) -> None:
    await async_poll_for(predicate, timeout=30, period=0.001)


def idle(r: TransferRouter, loop: bool = True) -> bool:
    """Every lane slot given back, no race still registered with this loop's watch."""
    lanes = [r.lanes, *r.source_lanes.values()]
    free = all(ln.busy() == 0 and ln.queued() == 0 for ln in lanes)
    return free and (not loop or not Watch.of(asyncio.get_running_loop()).races)


def only_me() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_winning_hedge_leaves_the_caller_uncancelled(sources):
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0")
    src, result, failures = await r.fetch(sources[:2], script, name=name)
    assert (src, result, failures) == (sources[1], "n1", {})
    assert ("n0", "cancelled") in script.seen  # the loser was cancelled inside its attempt
    me = asyncio.current_task()
    assert me.cancelling() == 0
    await asyncio.sleep(0.01)  # no stray cancellation waits for the caller's next await
    assert r.hedges == 1 and r.sources["n1"].hedge_wins == 1 and r.sources["n0"].cancelled == 1
    assert idle(r) and only_me()


async def test_cancelling_the_caller_cancels_and_awaits_both_attempts(sources):
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0", "n1")
    task = asyncio.create_task(r.fetch(sources[:2], script, name=name))
    await until(lambda: ("n1", "start") in script.seen)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {("n0", "cancelled"), ("n1", "cancelled")} <= set(script.seen)
    assert r.sources["n0"].cancelled == 1 and r.sources["n1"].cancelled == 1
    assert idle(r) and only_me()


async def test_a_cancel_from_outside_wins_over_a_hedge_that_wins_at_once(sources):
    """The caller is cancelled from outside in the very step in which the hedge wins."""
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0", "n1")
    caller = asyncio.create_task(r.fetch(sources[:2], script, name=name))
    await until(lambda: ("n1", "start") in script.seen)
    (hedge,) = asyncio.all_tasks() - {caller, asyncio.current_task()}
    hedge.add_done_callback(lambda _: caller.cancel())  # runs right after the race's own
    script.gates["n1"].set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled() and ("n1", "done") in script.seen
    assert r.sources["n1"].hedge_wins == 0
    assert idle(r) and only_me()


async def test_a_failed_hedge_is_reported_and_the_first_answers(sources):
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0")
    script.errors["n1"] = ChecksumMismatch("n1/k fails its checksum")
    task = asyncio.create_task(r.fetch(sources[:2], script, name=name))
    await until(lambda: r.sources["n1"].failures == 1)  # the hedge failed; the first runs
    script.gates["n0"].set()
    src, result, failures = await task
    assert (src, result) == (sources[0], "n0")
    assert isinstance(failures[sources[1]], ChecksumMismatch)
    assert idle(r) and only_me()


async def test_a_failed_first_attempt_waits_for_the_running_hedge(sources):
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0", "n1")
    script.errors["n0"] = NodeUnavailable("n0 went away")
    task = asyncio.create_task(r.fetch(sources[:2], script, name=name))
    await until(lambda: ("n1", "start") in script.seen)
    script.gates["n0"].set()  # the first fails while the hedge runs
    await until(lambda: r.sources["n0"].failures == 1)
    assert not task.done()  # it waits for the hedge, still gated
    script.gates["n1"].set()
    src, result, failures = await task
    assert (src, result) == (sources[1], "n1")
    assert isinstance(failures[sources[0]], NodeUnavailable)
    assert r.sources["n1"].hedge_wins == 1
    assert idle(r) and only_me()


async def test_both_racers_fail_then_the_next_source_answers(sources):
    r = await hedging_router(sources)
    script = Script()
    script.block("n0")
    script.errors["n0"] = NodeUnavailable("n0 went away")
    script.errors["n1"] = KeyError("k")
    task = asyncio.create_task(r.fetch(sources, script, name=name))
    await until(lambda: r.sources["n1"].missing == 1)  # the hedge found no key
    script.gates["n0"].set()
    src, result, failures = await task
    assert (src, result) == (sources[2], "n2")
    assert list(failures) == [sources[1], sources[0]]  # in the order they failed
    assert r.hedges == 1
    assert idle(r) and only_me()


async def test_a_late_attempt_is_measured_from_when_it_gets_its_slot(sources):
    """Waiting for a lane slot is not lateness: the hedge clock starts with the request."""
    r = await hedging_router(sources[:2], source_concurrency=1)
    for _ in range(30):
        r.observe("n1", 0.2)  # n0 stays first even with one request queued ahead of it
    lanes = r.source_lanes["n0"]
    assert lanes.try_acquire("normal")
    script = Script()
    task = asyncio.create_task(r.fetch(sources[:2], script, name=name))
    await asyncio.sleep(0.05)  # many times n0's hedge delay, spent waiting for the slot
    assert script.seen == [] and r.hedges == 0
    lanes.release("normal")
    src, _result, _failures = await task
    assert src is sources[0] and r.hedges == 0
    assert idle(r) and only_me()


async def test_the_hedge_runs_in_the_callers_qos_class(sources):
    r = await hedging_router(sources[:2])
    script = Script()
    script.block("n0")
    with qos("interactive"):
        src, _, _ = await r.fetch(sources[:2], script, name=name)
    assert src is sources[1]
    assert r.source_lanes["n1"].figures()["interactive"]["granted"] == 1


async def test_hedging_leaves_no_task_and_no_unretrieved_exception(sources):
    """Many racy fetches: winners, losers, failures on both sides, cancelled callers."""
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    outcomes = [
        ({}, {}),
        ({"n1": NodeUnavailable("down")}, {}),
        ({"n0": NodeUnavailable("down")}, {}),
        ({"n0": NodeUnavailable("down"), "n1": ChecksumMismatch("bad")}, {}),
        ({}, {"cancel": True}),
    ]
    hedges = 0
    for i in range(40):
        r = await hedging_router(sources[:2])  # n0 is late (>1 ms) every time
        errors, how = outcomes[i % len(outcomes)]

        async def attempt(src, errors=errors, i=i):
            await asyncio.sleep(0.004 if src.name == "n0" else 0.001 * (i % 3))
            if src.name in errors:
                raise errors[src.name]
            return src.name

        task = asyncio.create_task(r.fetch(sources[:2], attempt, name=name))
        if how.get("cancel"):
            await asyncio.sleep(0.003)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert idle(r) and only_me()
        hedges += r.hedges
    gc.collect()
    await asyncio.sleep(0)
    assert reported == [] and hedges > 30


def test_the_hedge_watch_keeps_no_event_loop_alive():
    r = TransferRouter(hedge=True, hedge_min_samples=5, host="here", probe=False)
    loops = []

    async def main():
        loops.append(weakref.ref(asyncio.get_running_loop()))
        sources = await make_sources(2)
        read = reader("k")
        for _ in range(30):
            await r.fetch(sources, read, name=name)
        assert r.hedges >= 0

    asyncio.run(main())
    gc.collect()
    assert loops[0]() is None


def test_one_router_hedges_on_two_event_loops_at_once():
    """A worker's loop and zarr's I/O loop share the process router: one watch per loop."""
    r = TransferRouter(hedge=True, hedge_min_samples=5, hedge_budget=1.0, host="here", probe=False)
    for _ in range(30):
        r.observe("n0", 0.001)
        r.observe("n1", 0.01)
    hedged: dict[int, int] = {}

    async def reads(k: int) -> None:
        sources = await make_sources(2)
        racing = set()  # n0 attempts of this loop in flight

        async def attempt(src):
            if src.name == "n1" and racing:
                hedged[k] = hedged.get(k, 0) + 1
            if src.name == "n0":
                racing.add(id(src))
                try:
                    await asyncio.sleep(0.02)  # n0 is always late
                finally:
                    racing.discard(id(src))
            return src.name

        for _ in range(5):
            src, _, _ = await r.fetch(sources, attempt, name=name)
            assert src.name == "n1"

    threads = [threading.Thread(target=asyncio.run, args=(reads(k),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert hedged[0] >= 1 and hedged[1] >= 1  # each loop's watch hedged its own reads
    assert r.hedges == hedged[0] + hedged[1] and idle(r, loop=False)
