"""pytest fixtures: a moto S3 server on 127.0.0.1 and s3fs-backed zarr stores.

Use from a conftest: ``pytest_plugins = ["swarmstore.testing.fixtures"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from swarmstore.testing._moto import S3Endpoint, moto_server

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["s3_bucket", "s3_endpoint", "s3_store", "s3_store_factory"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """One moto S3 server (threaded, 127.0.0.1, free port) for the test session."""
    with moto_server(process=False) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint) -> str:
    """A fresh, empty bucket; s3fs's instance cache is cleared so no test sees another's."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3_endpoint.make_bucket()


def _fsspec_store(endpoint: S3Endpoint, path: str, **kwargs: Any) -> Any:
    from zarr.storage import FsspecStore

    fs = endpoint.filesystem(asynchronous=True)
    return FsspecStore(fs, path=path, **kwargs)


def close_http(fs: Any) -> None:
    """Close an async s3fs filesystem's HTTP connections now, from any thread or loop.

    The session belongs to whichever loop first used it (a test's, zarr's), and the test is
    over: closing its connectors marks the sessions closed, so the garbage collector finds
    no "Unclosed client session" later, during another test or at exit. aiobotocore 3 keeps
    one aiohttp session per proxy (``http_session._sessions``), which s3fs's own
    ``close_session`` fallback (one ``_connector``) no longer reaches."""
    import s3fs

    creator = getattr(fs, "_s3creator", None)
    if creator is None:
        return
    endpoint = getattr(getattr(creator, "_client", None), "_endpoint", None)
    sessions = getattr(getattr(endpoint, "http_session", None), "_sessions", None) or {}
    for session in list(sessions.values()):
        connector = session.connector
        if connector is not None and not connector.closed:
            connector._close()
    s3fs.S3FileSystem.close_session(None, creator)


def close_cached_s3fs() -> None:
    """Close the HTTP sessions of every s3fs filesystem in fsspec's instance cache (what
    ``s3://`` URLs opened with default options made), then empty the cache."""
    import s3fs

    for fs in list(s3fs.S3FileSystem._cache.values()):
        close_http(fs)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_store(s3_endpoint: S3Endpoint, s3_bucket: str) -> Iterator[Any]:
    """A zarr ``FsspecStore`` on an s3fs filesystem at ``s3://<fresh bucket>/root``."""
    store = _fsspec_store(s3_endpoint, f"{s3_bucket}/root")
    yield store
    close_http(store.fs)


@pytest.fixture
def s3_store_factory(s3_endpoint: S3Endpoint, s3_bucket: str) -> Iterator[Any]:
    """``factory(name)``: an FsspecStore at ``s3://<bucket>/<name>`` (several nodes, one bucket)."""
    made: list[Any] = []

    def factory(name: str, **kwargs: Any) -> Any:
        made.append(_fsspec_store(s3_endpoint, f"{s3_bucket}/{name}", **kwargs))
        return made[-1]

    yield factory
    for store in made:
        close_http(store.fs)
