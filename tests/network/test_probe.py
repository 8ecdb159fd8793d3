"""Probes: ejected sources get their trial from a probe, never from a read; idle ones are
measured at a rate that follows how close they are to the best."""

from distributed.utils_test import async_poll_for
from netsupport import name, reader

from swarmstore.network import TransferRouter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(**kwargs):
    kwargs.setdefault("host", "here")
    kwargs.setdefault("hedge", False)
    return TransferRouter(**kwargs)


async def settle(r):
    await async_poll_for(lambda: not r.prober.probing, timeout=30, period=0.001)


def pings(src) -> int:
    return src.faults.counts.get("exists", 0)


async def test_no_probes_when_off_and_sources_without_ping_are_never_probed(sources):
    r = router(probe=False)
    for _ in range(6):
        await r.fetch(sources, reader("k"), name=name)
    assert r.prober is None and sum(map(pings, sources)) == 0

    async def attempt(src: str) -> bytes:
        return b"x"

    r = router()  # probing on (the default), but plain names have no ping()
    for _ in range(5):
        await r.fetch(["a", "b"], attempt, name=str)
    assert r.figures()["probes"] == 0


async def test_an_ejected_source_gets_its_trial_from_a_probe_not_from_a_read(sources):
    clock = Clock()
    r = router(circuit_failures=2, circuit_reset=5, circuit_reset_max=60, clock=clock)
    n0, n1 = sources[:2]
    n0.faults.down = True
    for _ in range(2):
        await r.fetch([n0, n1], reader("k"), name=name)
    await settle(r)
    assert r.circuits["n0"].state(clock.now) == "open"
    gets, probes = n0.faults.counts["get"], pings(n0)

    clock.now += 5  # half-open: the next fetch starts a probe, which fails
    src, _, _ = await r.fetch([n0, n1], reader("k"), name=name)
    await settle(r)
    assert src is n1 and n0.faults.counts["get"] == gets  # no read waited on the dead node
    assert pings(n0) == probes + 1 and r.circuits["n0"].reset == 10  # ejected again, longer

    n0.faults.down = False  # it recovers; the probe after the next ejection brings it back
    n1.faults.latency = 0.01
    clock.now += 10
    await r.fetch([n0, n1], reader("k"), name=name)
    await settle(r)
    assert r.circuits["n0"].state(clock.now) == "closed"
    assert r.figures()["sources"]["n0"]["ejections"] == 1
    served = [(await r.fetch([n0, n1], reader("k"), name=name))[0] for _ in range(4)]
    assert n0 in served  # traffic is back


async def test_a_probe_of_a_hung_source_is_cut_at_its_deadline(sources):
    clock = Clock()
    r = router(circuit_failures=1, circuit_reset=1, deadline_floor=0.02, clock=clock)
    n0, n1 = sources[:2]
    for _ in range(8):
        await r.fetch([n0, n1], reader("k"), name=name)  # both measured, fast
    await settle(r)
    n0.faults.down = True
    while r.circuits["n0"].opened_at is None:
        await r.fetch([n0, n1], reader("k"), name=name)
    n0.faults.down, n0.faults.latency = False, 600  # now it hangs instead
    clock.now += 1
    await r.fetch([n0, n1], reader("k"), name=name)
    await settle(r)  # the probe did not hang the prober
    st = r.sources["n0"]
    assert st.deadline_misses == 1 and r.circuits["n0"].state(clock.now) == "open"
    assert r.circuits["n0"].reset == 2


async def test_idle_sources_are_probed_less_often_the_slower_they_are(sources):
    clock = Clock()
    r = router(probe_interval=1, probe_interval_max=30, clock=clock)
    for s, t in zip(sources, (0.001, 0.002, 0.020), strict=True):
        for _ in range(3):
            r.observe(s.name, t)
        r._stats(s.name).last_tried = clock.now
    e = {s.name: r._entry(s.name) for s in sources}
    best = e["n0"].stats.expected(0)
    due = r.prober.due
    assert not due(e["n1"], best, clock.now + 1.5) and due(e["n1"], best, clock.now + 2.1)
    assert not due(e["n2"], best, clock.now + 19) and due(e["n2"], best, clock.now + 20.1)
    assert due(e["n2"], 0.020, clock.now + 1.1)  # the best slowed: n2 is now worth a look


async def test_one_probe_at_a_time(sources):
    clock = Clock()
    r = router(clock=clock)
    for _ in range(6):
        await r.fetch(sources, reader("k"), name=name)
        assert len(r.prober.probing) <= 1
    await settle(r)
    clock.now += 60  # every idle source is due
    before = sum(map(pings, sources))
    await r.fetch(sources, reader("k"), name=name)
    await r.fetch(sources, reader("k"), name=name)  # the first probe may still run
    await settle(r)
    assert 1 <= sum(map(pings, sources)) - before <= 2
    await r.close()


async def test_a_recovered_source_gets_reads_back_after_a_handful_of_probes(sources):
    """A slowed node that recovers: the first probe that sees it fast is confirmed by a few
    more at the next looks (not one per interval), then reads go back to it."""
    clock = Clock()
    r = router(probe_interval=1, probe_interval_max=8, clock=clock)
    n0, n1 = sources[:2]
    n1.faults.latency = 0.02

    async def read():
        clock.now += 0.1  # the prober looks at most every probe_interval / 10
        src, _, _ = await r.fetch([n0, n1], reader("k"), name=name)
        await settle(r)
        return src.name

    assert [await read() for _ in range(12)][-4:] == ["n0"] * 4
    n0.faults.latency = 0.2  # 10x slower than n1: reads move away
    served = []
    while served[-4:] != ["n1"] * 4:
        assert len(served) < 40, served
        served.append(await read())
    n0.faults.latency = 0.0  # it recovers
    clock.now += 8  # its probe interval (10x the best, capped at probe_interval_max)
    probes = pings(n0)
    back = [await read() for _ in range(8)]
    assert "n0" in back, (back, r.figures()["sources"]["n0"])
    took = pings(n0) - probes
    assert 2 <= took <= 6, took  # confirmed by a burst, not one probe per 8 s
    assert back[-2:] == ["n0", "n0"], back  # and it keeps them
    assert not r.prober.confirming  # the burst ended once the estimate agreed
    await r.close()
