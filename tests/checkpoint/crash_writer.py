"""The writer that the kill -9 trials kill: saves checkpoints back to back, forever.

A multiprocessing forkserver preloads this module (numpy, zarr, s3fs, swarmstore, and a
warmed-up botocore), so each trial forks a ready interpreter in milliseconds; the kill
is still a real SIGKILL of a separate process in the middle of whatever it was doing.

The writer reports every protocol point it passes (``swarmstore.checkpoint._trace``)
over a pipe, and stops dead at the one the trial chose, so the test kills it exactly
between two steps of the commit or collection protocol, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import s3fs
import zarr
from aiobotocore.session import AioSession

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint import _trace as trace

N, CHUNK = 32, 8
ENCODING = {"x": {"chunks": (CHUNK, CHUNK)}}


def expected(step: int) -> np.ndarray:
    """The array saved at ``step``: two of its 16 chunks depend on the step."""
    x = np.arange(N * N, dtype="f8").reshape(N, N)
    for c, value in ((step % 16, step), ((7 * step + 3) % 16, -step)):
        i, j = divmod(c, N // CHUNK)
        x[i * CHUNK : (i + 1) * CHUNK, j * CHUNK : (j + 1) * CHUNK] = value
    return x


async def _warm_botocore() -> None:
    """Build (and close) one S3 client so forked children inherit botocore's parsed models."""
    session = AioSession()
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ):
        pass


asyncio.run(_warm_botocore())


def open_store(spec: dict[str, Any]) -> zarr.abc.store.Store:
    if spec["kind"] == "local":
        return zarr.storage.LocalStore(spec["path"])
    fs = s3fs.S3FileSystem(**spec["options"], asynchronous=True, skip_instance_cache=True)
    return zarr.storage.FsspecStore(fs, path=spec["path"])


def _observer(conn: Any, stop_at: str | None, nth: int) -> Any:
    seen: dict[str, int] = {}

    def observe(name: str) -> None:
        seen[name] = seen.get(name, 0) + 1
        conn.send(name)
        if name == stop_at and seen[name] == nth:
            conn.send("stopped")
            while True:  # wait here for the SIGKILL
                time.sleep(3600)

    return observe


def run(spec: dict[str, Any], conn: Any) -> None:
    """Save step after step (with retention, so kills also land in garbage collection).

    ``spec["stop_at"]``/``spec["nth"]``: the protocol point (and which occurrence of it)
    to stop at; None runs until killed.
    """
    mgr = CheckpointManager(
        open_store(spec), keep_last=2, lease=spec["lease"], heartbeat=spec["lease"] / 4
    )
    steps = mgr.steps()
    trace.observe(_observer(conn, spec.get("stop_at"), spec.get("nth", 1)))
    conn.send("ready")  # connected: from here on the process only writes
    while True:
        step = steps[-1] + 1 if steps else 0
        mgr.save({"x": expected(step)}, step=step, metadata={"step": step}, encoding=ENCODING)
        steps = mgr.steps()
