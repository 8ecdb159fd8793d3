"""Reads through a TransferRouter inside a test bed host: S3 nodes (moto) behind proxy links.

Functions here run in the host process (``bed.host(i).run(fn, ...)``); the host keeps its
router and one S3 client per node between calls, so a test reads in phases and impairs
links between them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from swarmstore.network import TransferRouter, qos
from swarmstore.testing.hosts import current_host
from swarmstore.testing.s3link import S3Link, connect, on_loop

_STATE: dict[str, Any] = {}


def start(**router_kwargs: Any) -> None:
    """A fresh router (kwargs as TransferRouter's); clients are made once per host."""
    if "sources" not in _STATE:
        _STATE["sources"] = on_loop(connect())
    router_kwargs.setdefault("host", current_host().name)
    _STATE["router"] = TransferRouter(**router_kwargs)


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
