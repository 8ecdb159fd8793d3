"""Reads through a TransferRouter inside a test bed host: S3 nodes (moto) behind proxy links.

Functions here run in the host process (``bed.host(i).run(fn, ...)``); they keep one event
loop thread, one router and one s3fs client per node for the life of the host, so a test
reads in phases and impairs links between them.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from swarmstore.network import TransferRouter, qos, s3_config_kwargs
from swarmstore.testing.hosts import current_host

_STATE: dict[str, Any] = {}


def _loop() -> asyncio.AbstractEventLoop:
    loop = _STATE.get("loop")
    if loop is None:
        loop = _STATE["loop"] = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def on_loop(coro: Any, timeout: float = 300) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, _loop()).result(timeout)


@dataclass(eq=False)
class S3Source:
    """One node as the router sees it: a name, an s3fs client through this host's link."""

    name: str
    fs: Any
    bucket: str

    async def get(self, key: str) -> bytes:
        """One GET (s3fs's ``cat_file`` sends a HEAD first, and ``info`` may list too)."""
        try:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError as e:
            raise KeyError(key) from e
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    async def ping(self) -> None:
        await self.fs._call_s3("head_object", Bucket=self.bucket, Key="ping")


async def _connect() -> list[S3Source]:
    import s3fs

    h = current_host()
    out = []
    for j, nm in enumerate(h.node_names):
        fs = s3fs.S3FileSystem(
            **h.storage_options(j),
            asynchronous=True,
            skip_instance_cache=True,
            config_kwargs=s3_config_kwargs(),
        )
        fs.retries = 1  # s3fs's own retry loop would hide a dead node as botocore's would
        await fs.set_session()
        out.append(S3Source(nm, fs, h.bucket))
    return out


def start(**router_kwargs: Any) -> None:
    """A fresh router (kwargs as TransferRouter's); clients are made once per host."""
    if "sources" not in _STATE:
        _STATE["sources"] = on_loop(_connect())
    router_kwargs.setdefault("host", current_host().name)
    _STATE["router"] = TransferRouter(**router_kwargs)


def put(keys: dict[str, int]) -> None:
    """Write ``key -> size`` to every node (replicas), bypassing the router; ping too."""

    async def go() -> None:
        for src in _STATE["sources"]:
            for key, size in {**keys, "ping": 1}.items():
                await src.fs._pipe_file(f"{src.bucket}/{key}", key.encode()[:1] * size)

    on_loop(go())


def read(keys: list[str], nbytes: int | None = None, cls: str = "normal") -> list[str]:
    """Read ``keys`` one after another; the node that served each (None: no node)."""

    async def go() -> list[str]:
        router: TransferRouter = _STATE["router"]
        served = []
        with qos(cls):
            for key in keys:
                src, data, _ = await router.fetch(
                    _STATE["sources"], lambda s, k=key: s.get(k), name=_name, nbytes=nbytes
                )
                assert src is None or len(data) == (nbytes or len(data))
                served.append(None if src is None else src.name)
        return served

    return on_loop(go())


def figures(settle: bool = False) -> dict[str, Any]:
    """The router's figures; ``settle``: after the probe in flight, if any, has finished."""
    router: TransferRouter = _STATE["router"]

    async def go() -> dict[str, Any]:
        while settle and router.prober is not None and router.prober.probing:
            await asyncio.sleep(0.01)
        return router.figures()

    return on_loop(go())


def _name(src: S3Source) -> str:
    return src.name
