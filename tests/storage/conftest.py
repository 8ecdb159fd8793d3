"""Storage tests share one S3 bucket per session (a bucket per test made a new synchronous
client every time); each test's stores live under a fresh prefix of it."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """zarr's StoreTests over S3 nodes share one event loop, so their S3 clients (seconds
    each on a busy machine) are made once per class rather than once per test."""
    for item in items:
        fn = getattr(item, "obj", None)
        s3 = ("TestReplicatedS3", "TestS3Nodes", "test_s3.py")
        if any(s in item.nodeid for s in s3) and inspect.iscoroutinefunction(fn):
            item.add_marker(pytest.mark.asyncio(loop_scope="module"))


@pytest.fixture(scope="session")
def storage_bucket(s3_endpoint: Any) -> str:
    return s3_endpoint.make_bucket()


@pytest.fixture
def s3_store_factory(s3_endpoint: Any, storage_bucket: str) -> Any:
    """``factory(name)``: an FsspecStore at ``s3://<bucket>/<test prefix>/<name>``."""
    from zarr.storage import FsspecStore

    prefix = uuid.uuid4().hex[:12]

    def factory(name: str, **kwargs: Any) -> Any:
        fs = s3_endpoint.filesystem(asynchronous=True)
        return FsspecStore(fs, path=f"{storage_bucket}/{prefix}/{name}", **kwargs)

    return factory
