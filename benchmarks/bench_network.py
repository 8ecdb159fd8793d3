"""Benchmark the transfer router and QoS lanes on reads through a ReplicatedStore.

Usage: ``python benchmarks/bench_network.py [--quick]``. Both sides of each ratio are
measured in the same run, on the same machine, with FaultyStore latency injection over
in-memory nodes (no real network: the latencies are the injected ones).

1. One slow replica (+50 ms) of 3. Reads of random chunks, 4 at a time, through a
   ReplicatedStore with 3 replicas. p99 with the router (learned order + hedging) against
   the p99 when all three replicas are fast; beside it, random replica choice.
2. Interactive reads while bulk copy traffic floods the nodes. Each node serves at most
   ``LINK`` requests at once, first come first served (a disk queue, a connection pool):
   the router's per-source lanes are set to that capacity. Interactive p99 under the flood
   against the idle p99; beside it the same router with QoS off (one FIFO class).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from typing import Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.network import TransferRouter, qos
from swarmstore.storage import ReplicatedStore
from swarmstore.storage._node import Node
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()
CHUNK = 16 * 1024
KEYS = 64
LINK = 4  # requests a node serves at once in the QoS benchmark


class LinkNode(Node):
    """A node behind a link that moves ``capacity`` payloads at once, FIFO (benchmark model).

    Reads and staged writes carry the bytes and queue for the link; commits, aborts and
    deletes are small metadata operations and do not.
    """

    def __init__(self, inner: Node, capacity: int) -> None:
        super().__init__(inner.name, weight=inner.weight, zone=inner.zone, host=inner.host)
        self.inner = inner
        self.store = inner.store
        self.link = asyncio.Semaphore(capacity)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> Any:
        async with self.link:
            return await self.inner.read(key, start, end)

    async def head(self, key: str) -> Any:
        return await self.inner.head(key)

    async def prepare(self, key: str, data: bytes, record: Any) -> Any:
        async with self.link:
            return await self.inner.prepare(key, data, record)

    async def commit(self, pending: Any) -> None:
        await self.inner.commit(pending)

    async def abort(self, pending: Any) -> None:
        await self.inner.abort(pending)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


class RandomRouter(TransferRouter):
    """Baseline: a uniformly random replica order, no hedging (circuits still fail over)."""

    def _plan(self, sources: Any, name: Any, nbytes: Any) -> tuple[list[Any], int]:
        order = list(sources)
        random.shuffle(order)
        return order, len(order)


def p99(xs: list[float]) -> float:
    return float(np.percentile(xs, 99))


def pct(xs: list[float], q: float) -> str:
    return f"{np.percentile(xs, q) * 1e3:.1f}"


async def build(
    router: TransferRouter, faults: list[Faults], state: str, link: int | None = None
) -> ReplicatedStore:
    nodes: list[Any] = []
    for i, f in enumerate(faults):
        node = FaultyStore(MemoryStore(), f, name=f"node{i}").as_node(name=f"node{i}")
        nodes.append(LinkNode(node, link) if link else node)
    store = ReplicatedStore(nodes, replicas=3, state_dir=state, router=router)
    payload = PROTO.buffer.from_bytes(bytes(CHUNK))
    for k in range(KEYS):
        await store.set(f"c/{k}", payload)
    return store


async def read_loop(store: ReplicatedStore, n: int, workers: int, cls: str) -> list[float]:
    lat: list[float] = []
    rng = random.Random(7)
    count = 0

    async def worker() -> None:
        nonlocal count
        with qos(cls):
            while count < n:
                count += 1
                key = f"c/{rng.randrange(KEYS)}"
                t0 = time.perf_counter()
                got = await store.get(key, PROTO)
                lat.append(time.perf_counter() - t0)
                assert got is not None and len(got) == CHUNK

    await asyncio.gather(*(worker() for _ in range(workers)))
    return lat


async def slow_replica(reads: int, rounds: int, state: str) -> None:
    base, jitter, slow = 0.020, 0.005, 0.050

    def faults(slow_extra: float) -> list[Faults]:
        return [Faults(latency=base + slow_extra, jitter=jitter, seed=0)] + [
            Faults(latency=base, jitter=jitter, seed=i) for i in (1, 2)
        ]

    router = TransferRouter()
    stores = {
        "fast": await build(TransferRouter(), faults(0.0), f"{state}/fast"),
        "router": await build(router, faults(slow), f"{state}/router"),
        "random": await build(RandomRouter(hedge=False), faults(slow), f"{state}/random"),
    }
    lat: dict[str, list[float]] = {k: [] for k in stores}
    for store in stores.values():
        await read_loop(store, 60, 4, "normal")  # warm-up: learn every replica
    fetches0, hedges0 = router.fetches, router.hedges
    for _ in range(rounds):  # interleaved, so machine noise hits every side alike
        for k, store in stores.items():
            lat[k] += await read_loop(store, reads // rounds, 4, "normal")
    hedges, fetches = router.hedges - hedges0, router.fetches - fetches0
    fast, routed, rnd = (p99(lat[k]) for k in ("fast", "router", "random"))
    print(f"slow replica p99 vs fast replicas: {routed / fast:.2f}x (goal <= 1.3)")
    print(f"hedged extra requests: {hedges / fetches:.3f}x (goal <= 0.05)")
    print(
        f"  raw: p99 all-fast {fast * 1e3:.1f} ms, router {routed * 1e3:.1f} ms "
        f"({hedges} hedges in {fetches} reads), random choice {rnd * 1e3:.1f} ms "
        f"({rnd / fast:.2f}x); p50 {pct(lat['fast'], 50)}/{pct(lat['router'], 50)}/"
        f"{pct(lat['random'], 50)} ms; {reads} reads each, 4 at a time"
    )


async def qos_flood(reads: int, rounds: int, state: str) -> None:
    base, jitter = 0.005, 0.002

    def faults() -> list[Faults]:
        return [Faults(latency=base, jitter=jitter, seed=i) for i in range(3)]

    def router(with_qos: bool) -> TransferRouter:
        return TransferRouter(source_concurrency=LINK, qos=with_qos, hedge=False)

    async def measure(store: ReplicatedStore, flood: bool) -> tuple[list[float], float]:
        stop = asyncio.Event()
        copied = 0

        async def bulk_worker(i: int) -> None:
            nonlocal copied
            rng = random.Random(i)
            with qos("bulk"):  # repair/rebalance-like copies: read one key, write another
                while not stop.is_set():
                    got = await store.get(f"c/{rng.randrange(KEYS)}", PROTO)
                    assert got is not None
                    await store.set(f"copy/{i}", got)
                    copied += 1

        bulk = [asyncio.ensure_future(bulk_worker(i)) for i in range(32 if flood else 0)]
        await asyncio.sleep(0.1 if flood else 0)
        t0 = time.perf_counter()
        lat = await read_loop(store, reads // rounds, 2, "interactive")
        rate = copied / (time.perf_counter() - t0)
        stop.set()
        await asyncio.gather(*bulk)
        return lat, rate

    with_qos = await build(router(True), faults(), f"{state}/qos", link=LINK)
    fifo = await build(router(False), faults(), f"{state}/fifo", link=LINK)
    lat: dict[str, list[float]] = {"idle": [], "qos": [], "fifo": []}
    rate = {"qos": 0.0, "fifo": 0.0}
    for store in (with_qos, fifo):
        await read_loop(store, 30, 2, "interactive")
    for _ in range(rounds):
        lat["idle"] += (await measure(with_qos, False))[0]
        for k, store in (("qos", with_qos), ("fifo", fifo)):
            got, r = await measure(store, True)
            lat[k] += got
            rate[k] += r / rounds
    idle, flooded, noqos = (p99(lat[k]) for k in ("idle", "qos", "fifo"))
    print(f"interactive p99 under bulk flood vs idle: {flooded / idle:.2f}x (goal <= 1.5)")
    print(
        f"  raw: interactive p99 idle {idle * 1e3:.1f} ms, flood with QoS {flooded * 1e3:.1f} ms, "
        f"flood without QoS {noqos * 1e3:.1f} ms ({noqos / idle:.2f}x); bulk copies/s with QoS "
        f"{rate['qos']:.0f}, without {rate['fifo']:.0f}; {reads} interactive reads each"
    )


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as state:
        await slow_replica(600 if quick else 5000, 3 if quick else 10, state)
        await qos_flood(300 if quick else 2000, 3 if quick else 10, state)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reads (under 60 s)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    asyncio.run(main(args.quick))
    print(f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
