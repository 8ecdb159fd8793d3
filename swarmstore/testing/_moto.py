"""A real S3 endpoint on 127.0.0.1: moto's server, in a thread or in its own process.

Tests use the threaded server (cheap to start). Benchmarks and the demo use
``process=True``: in a thread moto shares the GIL with the code under test, and S3
reads measured 48 MB/s instead of 79 here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["S3Endpoint", "free_port", "moto_server", "s3_storage_options"]

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Endpoint:
    """Where a moto server listens, and helpers to reach it with s3fs and obstore."""

    url: str

    def storage_options(self) -> dict[str, Any]:
        return s3_storage_options(self.url)

    def filesystem(self, asynchronous: bool = False) -> Any:
        """A fresh (uncached) ``s3fs.S3FileSystem`` for this endpoint."""
        import s3fs

        return s3fs.S3FileSystem(
            **self.storage_options(), asynchronous=asynchronous, skip_instance_cache=True
        )

    def object_store(self, bucket: str, prefix: str = "") -> Any:
        """zarr's ``ObjectStore`` on obstore's ``S3Store`` at ``s3://bucket/prefix`` here
        (needs the ``obstore`` extra)."""
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        s3 = S3Store(
            bucket,
            prefix=prefix or None,
            endpoint=self.url,
            access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region=_CREDENTIALS["AWS_DEFAULT_REGION"],
            client_options={"allow_http": True},
        )
        return ObjectStore(s3)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a random name if none) and return its name."""
        name = name or f"swarm-{uuid.uuid4().hex[:12]}"
        # us-east-1 takes no LocationConstraint (s3fs's mkdir would send one)
        self.filesystem().call_s3("create_bucket", Bucket=name)
        return name


def s3_storage_options(endpoint_url: str) -> dict[str, Any]:
    """fsspec/s3fs options for a local moto endpoint."""
    return {
        "key": _CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": _CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "endpoint_url": endpoint_url,
        "client_kwargs": {"region_name": _CREDENTIALS["AWS_DEFAULT_REGION"]},
    }


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto server at {url} did not start") from None
            time.sleep(0.05)


@contextlib.contextmanager
def moto_server(
    process: bool = False, timeout: float = 30.0, log: str | os.PathLike[str] | None = None
) -> Iterator[S3Endpoint]:
    """Run moto's S3 server on 127.0.0.1 at a free port for the duration of the block.

    ``log`` (with ``process=True``): a file that receives the server's access log, one
    line per request it answered (read it with :class:`swarmstore.testing.RequestLog`).
    """
    for k, v in _CREDENTIALS.items():
        os.environ.setdefault(k, v)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if process:
        sink = open(log, "ab") if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        if log is not None:
            sink.close()  # the server holds its own descriptor
        try:
            _wait_ready(url, timeout)
            yield S3Endpoint(url)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    else:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            _wait_ready(url, timeout)
            yield S3Endpoint(url)
        finally:
            server.stop()
