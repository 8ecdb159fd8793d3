"""TransferRouter over real zarr MemoryStores with FaultyStore latency, outages and corruption."""

import asyncio
import time

import pytest
from netsupport import PAYLOAD, name, reader

from swarmstore.errors import ChecksumMismatch, NodeUnavailable
from swarmstore.network import TransferRouter, qos


class Clock:
    """A clock the test moves by hand (circuit resets, exploration)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(**kwargs):
    kwargs.setdefault("host", "here")
    kwargs.setdefault("hedge", False)
    return TransferRouter(**kwargs)


async def warm(r, sources, n, key="k"):
    for _ in range(n):
        _src, data, _ = await r.fetch(sources, reader(key), name=name, nbytes=len(PAYLOAD))
        assert data == PAYLOAD


async def test_learns_the_fastest_source(sources):
    sources[0].faults.latency = 0.04
    sources[1].faults.latency = 0.001
    sources[2].faults.latency = 0.02
    r = router()
    await warm(r, sources, 3)  # each unknown source is tried once first
    assert {s.name for s in sources} == set(r.sources)
    assert r.order(sources, name) == [sources[1], sources[2], sources[0]]
    before = dict(sources[1].faults.counts)
    await warm(r, sources, 10)
    assert sources[1].faults.counts["get"] - before["get"] >= 8  # (a CPU stall may cost one)
    figs = r.figures()["sources"]
    assert figs["n1"]["latency_ms"] < figs["n2"]["latency_ms"] < figs["n0"]["latency_ms"]


async def test_fails_over_and_reports_each_failure(sources):
    sources[0].faults.down = True
    sources[1].faults.corrupt_reads = {"k"}
    r = router()
    src, data, failures = await r.fetch(sources, reader("k"), name=name)
    assert src is sources[2] and data == PAYLOAD
    assert isinstance(failures[sources[0]], NodeUnavailable)
    assert isinstance(failures[sources[1]], ChecksumMismatch)
    assert r.figures()["failovers"] == 2


async def test_every_source_failing_returns_none(sources):
    for s in sources:
        s.faults.down = True
    src, data, failures = await router().fetch(sources, reader("k"), name=name)
    assert src is None and data is None and set(failures) == set(sources)
    assert (await router().fetch([], reader("k"), name=name)) == (None, None, {})


async def test_missing_key_is_tried_elsewhere_but_opens_no_circuit(sources):
    r = router(circuit_failures=2)
    await sources[1].put("only-on-n1")
    for _ in range(5):
        src, _, _failures = await r.fetch(sources[:2], reader("only-on-n1"), name=name)
        assert src is sources[1]
    figs = r.figures()["sources"]["n0"]
    assert figs["circuit"] == "closed" and figs["missing"] >= 1 and figs["failures"] == 0


async def test_open_circuit_is_skipped_then_retried_half_open(sources):
    clock = Clock()
    r = router(circuit_failures=2, circuit_reset=5, clock=clock)
    sources[0].faults.down = True
    for _ in range(2):
        await r.fetch(sources[:2], reader("k"), name=name)
    assert r.figures()["sources"]["n0"]["circuit"] == "open"
    n0_gets = sources[0].faults.counts["get"]
    await warm(r, sources[:2], 5)
    assert sources[0].faults.counts["get"] == n0_gets  # skipped while n1 admits requests
    assert r.order(sources[:2], name)[-1] is sources[0]

    clock.now += 5  # half-open: one trial, which fails and doubles the wait
    await r.fetch(sources[:2], reader("k"), name=name)
    assert sources[0].faults.counts["get"] == n0_gets + 1
    assert r.circuits["n0"].reset == 10
    clock.now += 10
    sources[0].faults.down = False
    sources[1].faults.latency = 0.01  # n0 is the measured best again once it answers
    await r.fetch(sources[:2], reader("k"), name=name)
    assert r.figures()["sources"]["n0"]["circuit"] == "closed"


async def test_open_circuits_are_the_last_resort(sources):
    r = router(circuit_failures=1)
    sources[0].faults.down = True
    await r.fetch(sources[:2], reader("k"), name=name)
    sources[0].faults.down = False
    sources[1].faults.down = True  # the only admitted source fails: the open one is tried
    src, _data, failures = await r.fetch(sources[:2], reader("k"), name=name)
    assert src is sources[0] and list(failures) == [sources[1]]
    assert r.figures()["sources"]["n0"]["circuit"] == "closed"  # and its success closed it


async def test_topology_same_host_then_same_zone_then_measured(sources):
    a, b, c = sources
    a.host, b.zone, c.zone = "elsewhere", "z1", "z2"
    r = router(host="here", zone="z1")
    for s in sources:
        r.observe(s.name, 0.010)
    r.observe("n0", 0.001)  # measured best, but on another host in another zone
    assert r.order(sources, name) == [b, a, c]
    a.host = "here"
    assert r.order(sources, name)[0] is a
    # a near source far slower than the best loses its preference
    for _ in range(30):
        r.observe("n1", 0.2)
    assert r.order([b, c], name) == [c, b]


async def test_router_host_and_zone_come_from_config():
    import dask.config

    with dask.config.set({"swarmstore.network.host": "h7", "swarmstore.network.zone": "z3"}):
        r = TransferRouter()
    assert (r.host, r.zone) == ("h7", "z3")


async def test_hedge_rescues_a_slow_primary_and_cancels_the_loser(sources):
    r = router(hedge=True, hedge_min_samples=20)
    sources[0].faults.latency = 0.001
    sources[1].faults.latency = 0.03
    # Learn n0's p95 (~1-2 ms) and earn hedge tokens, with hedging off meanwhile: a warm-up
    # read that runs past the p95 (a CPU stall) would rightly spend the token on a hedge.
    r.hedge = False
    await warm(r, sources[:2], 30)
    r.hedge = True
    assert r.order(sources[:2], name)[0] is sources[0]
    sources[0].faults.latency = 2.0  # n0 stalls
    before = r.sources["n0"].latency
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    src, data, failures = await r.fetch(sources[:2], reader("k"), name=name)
    elapsed = loop.time() - t0
    assert src is sources[1] and data == PAYLOAD and not failures
    assert elapsed < 1.0
    figs = r.figures()
    assert figs["hedges"] == 1 and figs["sources"]["n1"]["hedge_wins"] == 1
    assert figs["sources"]["n0"]["cancelled"] == 1
    # the cancelled request still taught the router that n0 took at least that long
    assert r.sources["n0"].latency > before


async def test_hedges_stay_within_the_budget(sources):
    """40% of n0's reads stall: far more than 5% pass its median, yet hedges stay <= 5%."""
    r = router(hedge=True, hedge_budget=0.05, hedge_quantile=0.5, hedge_min_samples=5)
    sources[1].faults.latency = 0.02  # n0 stays the measured best despite its stalls
    read = reader("k")
    calls = 0

    async def attempt(src):
        nonlocal calls
        if src is sources[0]:
            calls += 1
            if calls % 5 in (1, 3):
                await asyncio.sleep(0.01)
        return await read(src)

    for _ in range(200):
        _src, data, _ = await r.fetch(sources[:2], attempt, name=name)
        assert data == PAYLOAD
    figs = r.figures()
    assert figs["fetches"] == 200
    assert 5 <= figs["hedges"] <= 0.05 * 200
    assert figs["hedge_ratio"] <= 0.05


async def test_no_hedge_without_learned_latency(sources):
    r = router(hedge=True)
    sources[0].faults.latency = 0.05
    await r.fetch(sources, reader("k"), name=name)
    assert r.hedges == 0


async def test_hedge_skips_open_circuits(sources):
    r = router(hedge=True, hedge_min_samples=5, circuit_failures=1)
    sources[1].faults.down = True
    await warm(r, sources[:2], 40)
    assert r.figures()["sources"]["n1"]["circuit"] == "open"
    sources[0].faults.latency = 0.05
    sources[1].faults.down = False
    src, _, _ = await r.fetch(sources[:2], reader("k"), name=name)
    assert src is sources[0] and r.hedges == 0


async def test_queueing_at_a_busy_source_sends_reads_elsewhere(sources):
    r = router(source_concurrency=2)
    r.observe("n0", 0.002)
    r.observe("n1", 0.004)
    assert r.order(sources[:2], name)[0] is sources[0]
    sources[0].faults.latency = 0.3
    busy = [asyncio.ensure_future(r.fetch(sources[:1], reader("k"), name=name)) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert r.figures()["sources"]["n0"]["queued"] == 2
    assert r.order(sources[:2], name)[0] is sources[1]
    for t in busy:
        t.cancel()
    await asyncio.gather(*busy, return_exceptions=True)
    assert r.figures()["sources"]["n0"]["in_flight"] == 0


async def test_a_source_with_no_slot_free_to_the_class_comes_later(sources):
    """Bulk at its limit at n0 sends bulk reads to n1; interactive still has room at n0."""
    r = router(source_concurrency=8)  # per source: interactive 2, normal 1, bulk 1 reserved
    r.observe("n0", 0.0020)
    r.observe("n1", 0.0021)
    assert r.order(sources[:2], name)[0] is sources[0]
    lanes = r.source_lanes["n0"]
    assert all(lanes.try_acquire("bulk") for _ in range(5))  # no slot left to bulk
    with qos("interactive"):
        assert r.order(sources[:2], name)[0] is sources[0]
    with qos("bulk"):
        assert r.order(sources[:2], name)[0] is sources[1]
        src, _, _ = await r.fetch(sources[:2], reader("k"), name=name)
        assert src is sources[1]


async def test_stale_source_is_measured_again(sources):
    clock = Clock()
    r = router(explore_interval=30, clock=clock)
    r.observe("n0", 0.001)
    r.observe("n1", 0.050)
    for s in sources[:2]:
        r._stats(s.name).last_tried = clock.now
    assert r.order(sources[:2], name)[0] is sources[0]
    clock.now += 31
    r._stats("n0").last_tried = clock.now
    assert r.order(sources[:2], name)[0] is sources[1]  # n1 untried for 31 s
    await r.fetch(sources[:2], reader("k"), name=name)
    assert r.order(sources[:2], name)[0] is sources[0]  # once only


async def test_send_records_figures_and_propagates_errors(sources):
    r = router(circuit_failures=1)
    from zarr.core.buffer import default_buffer_prototype

    buf = default_buffer_prototype().buffer.from_bytes(b"x" * 1000)

    async def write(src):
        await src.store.set("w", buf)
        return "ok"

    assert await r.send(sources[0], write, name=name, nbytes=1000) == "ok"
    assert r.figures()["sources"]["n0"]["requests"] == 1
    sources[0].faults.fail_writes = True
    with pytest.raises(NodeUnavailable):
        await r.send(sources[0], write, name=name)
    assert r.figures()["sources"]["n0"]["circuit"] == "open"
    n = sources[0].faults.counts["set"]
    with pytest.raises(NodeUnavailable, match="circuit open"):
        await r.send(sources[0], write, name=name, skip_open=True)
    assert sources[0].faults.counts["set"] == n  # not tried


async def test_interactive_reads_pass_a_bulk_flood(sources):
    """Bulk fills its share of a source's lanes; an interactive read still goes at once."""
    r = router(source_concurrency=8, concurrency=64)
    src = sources[:1]
    src[0].faults.latency = 0.5
    with qos("bulk"):
        flood = [asyncio.ensure_future(r.fetch(src, reader("k"), name=name)) for _ in range(20)]
    await asyncio.sleep(0.05)
    lanes = r.source_lanes["n0"].figures()
    assert lanes["bulk"]["in_flight"] == 5 and lanes["bulk"]["queued"] == 15
    src[0].faults.latency = 0.0  # the next request is fast, if it is let through
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with qos("interactive"):
        got, _, _ = await r.fetch(src, reader("k"), name=name)
    assert got is src[0] and loop.time() - t0 < 0.25
    assert r.figures()["classes"]["bulk"]["in_flight"] == 5
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)


async def test_without_qos_interactive_queues_behind_bulk(sources):
    r = router(source_concurrency=8, concurrency=64, qos=False)
    src = sources[:1]
    src[0].faults.latency = 0.3
    with qos("bulk"):
        flood = [asyncio.ensure_future(r.fetch(src, reader("k"), name=name)) for _ in range(20)]
    await asyncio.sleep(0.05)
    src[0].faults.latency = 0.0
    with qos("interactive"):
        waiting = asyncio.ensure_future(r.fetch(src, reader("k"), name=name))
        await asyncio.sleep(0.1)
    assert not waiting.done()  # FIFO behind the flood
    assert r.figures()["sources"]["n0"]["queued"] == 13
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    assert (await waiting)[0] is src[0]


async def test_figures_is_a_plain_dict(sources):
    import json

    r = router()
    await warm(r, sources, 3)
    figs = r.figures()
    json.dumps(figs)  # the CLI prints it
    assert set(figs["classes"]) == {"interactive", "normal", "bulk"}
    assert figs["classes"]["normal"]["granted"] == 3
    assert r.stats().keys() == figs.keys()
    row = figs["sources"]["n0"]
    for k in ("latency_ms", "p95_ms", "requests", "failures", "circuit", "in_flight", "queued"):
        assert k in row


async def test_probes_are_off_by_default_and_bounded_when_on(sources):
    r = router()
    await warm(r, sources, 3)
    assert "exists" not in sources[2].faults.counts
    clock = Clock()
    r = router(probe=True, probe_interval=10, clock=clock)
    await warm(r, sources[:1], 1)
    await asyncio.sleep(0.01)
    pinged = sum("exists" in s.faults.counts for s in sources)
    assert pinged == 0  # only the source read was involved, and it is fresh
    await warm(r, sources, 1)  # n1, n2 never tried: one probe at a time
    await asyncio.sleep(0.02)
    await warm(r, sources, 1)
    await asyncio.sleep(0.02)
    assert sum(s.faults.counts.get("exists", 0) for s in sources) >= 1
    assert len(r.prober.probing) <= 1
    await r.close()


async def test_late_attempt_without_a_hedge_token_just_waits(sources):
    r = router(hedge=True, hedge_budget=0.0, hedge_min_samples=5)
    await warm(r, sources[:2], 10)
    first = r.order(sources[:2], name)[0]
    first.faults.latency = 0.2
    cpu = time.process_time()
    src, _, _ = await r.fetch(sources[:2], reader("k"), name=name)
    assert src is first and r.hedges == 0
    assert time.process_time() - cpu < 0.1  # no busy polling while the late attempt runs


async def test_a_source_tried_to_remeasure_it_is_hedged_on_the_others_figures(sources):
    clock = Clock()
    r = router(hedge=True, hedge_min_samples=5, explore_interval=30, clock=clock)
    sources[0].faults.latency = 0.3
    await warm(r, sources[:2], 40)  # n0 measured slow once, then n1 serves everything
    assert r.sources["n0"].requests == 1
    clock.now += 31  # n0 is stale: the next read re-measures it, and n1's p95 bounds the wait
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    src, _, _ = await r.fetch(sources[:2], reader("k"), name=name)
    assert src is sources[1] and r.hedges == 1 and loop.time() - t0 < 0.2
    assert r.sources["n0"].cancelled == 1
