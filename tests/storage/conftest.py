"""Storage tests share one S3 bucket per session (a bucket per test made a new synchronous
client every time); each test's stores live under a fresh prefix of it."""

from __future__ import annotations

import inspect
import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


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
def s3_store_factory(s3_endpoint: Any, storage_bucket: str) -> Iterator[Any]:
    """``factory(name)``: an FsspecStore at ``s3://<bucket>/<test prefix>/<name>``; their
    HTTP sessions are closed after the test (none is left to the garbage collector)."""
    from zarr.storage import FsspecStore

    from swarmstore.testing.fixtures import close_http

    prefix = uuid.uuid4().hex[:12]
    made: list[Any] = []

    def factory(name: str, **kwargs: Any) -> Any:
        fs = s3_endpoint.filesystem(asynchronous=True)
        made.append(FsspecStore(fs, path=f"{storage_bucket}/{prefix}/{name}", **kwargs))
        return made[-1]

    yield factory
    for store in made:
        close_http(store.fs)
