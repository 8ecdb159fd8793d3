"""Benchmark what the TransferRouter itself costs on the common, no-failure path.

Usage: ``python benchmarks/bench_router_overhead.py [--quick]``. Both sides of every figure
are measured in the same run, interleaved, and the least-disturbed block of each side is
kept (the machine is shared, so the minimum is the steadiest estimate).

1. Per fetch: ``router.fetch`` over 3 warmed-up sources (figures learned, hedging and
   deadlines armed, probes on, nothing failing) against calling the same ``attempt``
   directly. The attempt yields to the event loop once, as a real read does. Timed in CPU
   time of the loop's thread (all of this runs on it), which other processes on a shared
   machine disturb least.
2. Per send: ``router.send`` to one target against calling the attempt directly (same).
3. Reads of 64 x 1 MiB chunks, 64 at a time, through a 3-replica ``ReplicatedStore`` over
   local directories with the default router, against the same store with a trivial
   router that tries sources in order (``Sequential``): wall time, rounds interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

from _results import Line, emit
from zarr.core.buffer import default_buffer_prototype

from swarmstore.network import TransferRouter
from swarmstore.storage import ReplicatedStore

PROTO = default_buffer_prototype()


class Source:
    def __init__(self, name: str) -> None:
        self.name = name


def _name(src: Source) -> str:
    return src.name


async def _attempt(src: Source) -> Source:
    await asyncio.sleep(0)
    return src


class Sequential:
    """The trivial router: try the sources in the order given, no figures, no lanes."""

    async def fetch(self, sources, attempt, *, name, nbytes=None, size=None):  # type: ignore[no-untyped-def]
        failures: dict[Any, BaseException] = {}
        for src in sources:
            try:
                return src, await attempt(src), failures
            except (OSError, KeyError) as e:
                failures[src] = e
        return None, None, failures

    async def send(self, source, attempt, *, name, nbytes=0, **kwargs):  # type: ignore[no-untyped-def]
        return await attempt(source)


async def _per_call(blocks: int, n: int, routed: Any, direct: Any) -> tuple[float, float]:
    """Seconds per call of ``routed()`` and ``direct()``: the best of ``blocks`` blocks of n."""
    best = {"routed": float("inf"), "direct": float("inf")}
    for _ in range(blocks):
        for side, fn in (("routed", routed), ("direct", direct)):
            t0 = time.thread_time()
            for _ in range(n):
                await fn()
            best[side] = min(best[side], (time.thread_time() - t0) / n)
    return best["routed"], best["direct"]


async def fetch_overhead(blocks: int, n: int) -> tuple[float, float, dict[str, Any]]:
    router = TransferRouter(host="bench")
    sources = [Source(f"s{i}") for i in range(3)]
    for _ in range(400):  # learn every source's figures and fill the hedge bucket
        await router.fetch(sources, _attempt, name=_name)
    routed, direct = await _per_call(
        blocks,
        n,
        lambda: router.fetch(sources, _attempt, name=_name),
        lambda: _attempt(sources[0]),
    )
    return routed, direct, router.figures()


async def send_overhead(blocks: int, n: int) -> tuple[float, float]:
    router = TransferRouter(host="bench")
    target = Source("w0")
    return await _per_call(
        blocks,
        n,
        lambda: router.send(target, _attempt, name=_name, nbytes=1024),
        lambda: _attempt(target),
    )


async def replicated_reads(rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        urls = [f"file://{d}/n{i}" for i in range(3)]
        routed = ReplicatedStore(urls, replicas=3, state_dir=f"{d}/s")
        plain = ReplicatedStore(urls, replicas=3, state_dir=f"{d}/s", router=Sequential())
        data = PROTO.buffer.from_bytes(os.urandom(1 << 20))
        keys = [f"c/{i}" for i in range(64)]
        for k in keys:
            await routed.set(k, data)
        best = {"routed": float("inf"), "plain": float("inf")}
        for i in range(rounds + 2):
            for side, store in (("routed", routed), ("plain", plain)):
                t0 = time.perf_counter()
                await asyncio.gather(*(store.get(k, PROTO) for k in keys))
                if i >= 2:  # the first rounds warm the page cache and the router
                    best[side] = min(best[side], time.perf_counter() - t0)
        return best["routed"], best["plain"]


async def main(quick: bool) -> None:
    blocks, n, rounds = (15, 400, 30) if quick else (40, 1000, 80)
    t_f, d_f, figs = await fetch_overhead(blocks, n)
    t_s, d_s = await send_overhead(blocks, n)
    extra = {"fetch_us": t_f * 1e6, "direct_us": d_f * 1e6, "hedges": figs["hedges"],
             "fetches": figs["fetches"]}  # fmt: skip
    what = "router overhead per fetch (3 warm sources, hedging and deadlines armed)"
    emit(Line("network", what, (t_f - d_f) * 1e6, 30.0, "budget (30 us)", "us", "lower", 1.0,
              extra=extra))  # fmt: skip
    sent = {"send_us": t_s * 1e6, "direct_us": d_s * 1e6}
    emit(Line("network", "router overhead per send", (t_s - d_s) * 1e6, 15.0, "budget (15 us)",
              "us", "lower", 1.0, extra=sent))  # fmt: skip
    t_r, t_p = await replicated_reads(rounds)
    emit(Line("network", "64 x 1 MiB reads, 3-replica ReplicatedStore on local dirs", t_r, t_p,
              "same store, sequential router", "s", "lower", 1.05))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under 20 s)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    asyncio.run(main(args.quick))
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
