"""Raw S3 access from inside a test bed host: one client per node, through the host's links.

For tests and benchmarks of the router on the bed (:mod:`swarmstore.testing.hosts`): an
:class:`S3Link` is a router source (``name``, ``get``, ``ping``) that sends exactly one
request per call -- one GET, one HEAD -- with botocore's and s3fs's retries off
(:func:`swarmstore.network.s3_config_kwargs`), so a link's counters count requests.

Clients live on one event loop thread per process (:func:`on_loop`), so a host keeps its
connections from one ``bed.host(i).run(...)`` call to the next.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from swarmstore.network import s3_config_kwargs
from swarmstore.testing.hosts import current_host

__all__ = ["S3Link", "connect", "on_loop"]

_LOOP: dict[str, asyncio.AbstractEventLoop] = {}
_LOCK = threading.Lock()


def on_loop(coro: Any, timeout: float = 600) -> Any:
    """Run ``coro`` on this process's long-lived loop thread and return its result."""
    with _LOCK:
        loop = _LOOP.get("loop")
        if loop is None:
            loop = _LOOP["loop"] = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="s3link", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


@dataclass(eq=False)
class S3Link:
    """One node as a router sees it: a name and an s3fs client through this host's link."""

    name: str
    fs: Any
    bucket: str

    def __repr__(self) -> str:
        return f"S3Link({self.name!r})"

    async def get(self, key: str) -> bytes:
        """One GET (s3fs's ``cat_file`` sends a HEAD first); a missing key is a KeyError."""
        try:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError as e:
            raise KeyError(key) from e
        try:
            return bytes(await resp["Body"].read())
        finally:
            resp["Body"].close()

    async def put(self, key: str, data: bytes) -> None:
        await self.fs._call_s3("put_object", Bucket=self.bucket, Key=key, Body=data)

    async def ping(self) -> None:
        """One HEAD of the bucket's ``ping`` object (write it first with :meth:`put`)."""
        await self.fs._call_s3("head_object", Bucket=self.bucket, Key="ping")


async def connect(config_kwargs: dict[str, Any] | None = None) -> list[S3Link]:
    """An :class:`S3Link` per node, through this host's links (call on :func:`on_loop`)."""
    import s3fs

    h = current_host()
    out = []
    for j, nm in enumerate(h.node_names):
        fs = s3fs.S3FileSystem(
            **h.storage_options(j),
            asynchronous=True,
            skip_instance_cache=True,
            config_kwargs=s3_config_kwargs() if config_kwargs is None else config_kwargs,
        )
        fs.retries = 1  # s3fs's own retry loop would hide a dead node as botocore's would
        await fs.set_session()
        out.append(S3Link(nm, fs, h.bucket))
    return out
