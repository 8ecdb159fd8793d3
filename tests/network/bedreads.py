"""Reads through a TransferRouter inside a test bed host: S3 nodes (moto) behind proxy links.

Functions here run in the host process (``bed.host(i).run(fn, ...)``); the host keeps its
router and one S3 client per node between calls, so a test reads in phases and impairs
links between them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dask

from swarmstore.network import TransferRouter, qos
from swarmstore.testing.hosts import current_host
from swarmstore.testing.s3link import S3Link, connect, on_loop

_STATE: dict[str, Any] = {}


def start(yield_window: str | None = None, **router_kwargs: Any) -> None:
    """A fresh router (kwargs as TransferRouter's; ``yield_window`` sets
    ``network.qos-yield-window`` for its lanes only); clients are made once per host."""
    if "sources" not in _STATE:
        _STATE["sources"] = on_loop(connect())
    router_kwargs.setdefault("host", current_host().name)
    window = {} if yield_window is None else {"swarmstore.network.qos-yield-window": yield_window}
    with dask.config.set(window):
        _STATE["router"] = TransferRouter(**router_kwargs)


def flood(reads: int, bulk: int, big: str) -> list[tuple[str, int, int]]:
    """``bulk`` bulk readers read ``big`` in a loop while one interactive reader does
    ``reads`` small reads; for each of those, once it holds its slot: the node it went to,
    the bulk slots in use there and the bulk limit there. One interactive read goes first,
    so interactive is active (yield window) before the flood starts."""
    router: TransferRouter = _STATE["router"]
    small = sorted(k for k in _STATE.get("keys", ()) if k.startswith("s"))
    seen: list[tuple[str, int, int]] = []

    async def interactive(src: S3Link, key: str) -> bytes:
        lanes = router.source_lanes[src.name]
        seen.append((src.name, lanes.in_use["bulk"], lanes.limits["bulk"]))
        return await src.get(key)

    async def go() -> list[tuple[str, int, int]]:
        stop = asyncio.Event()

        async def bulk_reader() -> None:
            with qos("bulk"):
                while not stop.is_set():
                    await router.fetch(_STATE["sources"], lambda s: s.get(big), name=_name)

        with qos("interactive"):
            await router.fetch(_STATE["sources"], lambda s: s.get(small[0]), name=_name)
            flood = [asyncio.ensure_future(bulk_reader()) for _ in range(bulk)]
            while sum(ln.in_use["bulk"] for ln in router.source_lanes.values()) < 3:
                await asyncio.sleep(0.01)  # the flood is on at every node
            try:
                for i in range(reads):
                    key = small[i % len(small)]
                    await router.fetch(
                        _STATE["sources"], lambda s, k=key: interactive(s, k), name=_name
                    )
            finally:
                stop.set()
                await asyncio.gather(*flood)
        return seen

    return on_loop(go())


def put(keys: dict[str, int]) -> None:
    """Write ``key -> size`` to every node (replicas), bypassing the router; ping too."""

    _STATE["keys"] = set(keys)

    async def go() -> None:
        for src in _STATE["sources"]:
            for key, size in {**keys, "ping": 1}.items():
                await src.put(key, key.encode()[:1] * size)

    on_loop(go())


def read(keys: list[str], nbytes: int | None = None, cls: str = "normal") -> list[str | None]:
    """Read ``keys`` one after another; the node that served each (None: no node)."""

    async def go() -> list[str | None]:
        router: TransferRouter = _STATE["router"]
        served: list[str | None] = []
        with qos(cls):
            for key in keys:
                src, data, _ = await router.fetch(
                    _STATE["sources"], lambda s, k=key: s.get(k), name=_name, nbytes=nbytes
                )
                assert src is None or len(data) == (nbytes or len(data))
                served.append(None if src is None else src.name)
        return served

    return on_loop(go())


def read_until(node: str, limit: float = 120.0) -> list[tuple[str | None, int]]:
    """Read small keys one at a time until ``node`` serves one (or ``limit`` seconds pass):
    for each read, the node that served it and the probes sent to ``node`` so far."""

    async def go() -> list[tuple[str | None, int]]:
        router: TransferRouter = _STATE["router"]
        small = sorted(k for k in _STATE.get("keys", ()) if k.startswith("s"))
        out: list[tuple[str | None, int]] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            key = small[len(out) % len(small)]
            src, _, _ = await router.fetch(_STATE["sources"], lambda s, k=key: s.get(k), name=_name)
            out.append((None if src is None else src.name, router.sources[node].probes))
            if out[-1][0] == node:
                break
        return out

    return on_loop(go())


def figures(settle: bool = False) -> dict[str, Any]:
    """The router's figures; ``settle``: after the probe in flight, if any, has finished."""
    router: TransferRouter = _STATE["router"]

    async def go() -> dict[str, Any]:
        while settle and router.prober is not None and router.prober.probing:
            await asyncio.sleep(0.01)
        return router.figures()

    return on_loop(go())


def _name(src: S3Link) -> str:
    return src.name
