"""Fixtures for the checkpoint tests: one checkpoint store per backend kind."""

from __future__ import annotations

import pytest
import zarr

from swarmstore.cache import DiskTier, TieredStore
from swarmstore.storage import ReplicatedStore

KINDS = ["memory", "local", "s3", "obstore", "replicated", "tiered"]


def obstore_store(endpoint, request, prefix: str) -> zarr.abc.store.Store:
    """zarr's ObjectStore on obstore's S3Store at ``prefix`` of the test bucket, with
    timeouts a saturated machine's moto server meets (obstore's default connect
    timeout, 5 s, reads a slow server as down)."""
    from obstore.store import S3Store

    opts = endpoint.storage_options()
    s3 = S3Store(
        request.getfixturevalue("s3_bucket"),
        prefix=prefix,
        endpoint=endpoint.url,
        access_key_id=opts["key"],
        secret_access_key=opts["secret"],
        region="us-east-1",
        client_options={"allow_http": True, "timeout": "120s", "connect_timeout": "60s"},
    )
    return zarr.storage.ObjectStore(s3)


def make_store(kind: str, tmp_path, request) -> zarr.abc.store.Store:
    if kind == "memory":
        return zarr.storage.MemoryStore()
    if kind == "local":
        return zarr.storage.LocalStore(tmp_path / "ckpt")
    if kind == "s3":
        return request.getfixturevalue("s3_store")
    if kind == "obstore":  # zarr's ObjectStore on obstore's S3Store, on the same moto
        return obstore_store(request.getfixturevalue("s3_endpoint"), request, "root")
    if kind == "replicated":
        nodes = [f"file://{tmp_path}/node{i}" for i in range(3)]
        return ReplicatedStore(nodes, replicas=2, state_dir=str(tmp_path / "state"))
    if kind == "tiered":
        return TieredStore(
            zarr.storage.LocalStore(tmp_path / "ckpt"),
            memory_bytes="8MiB",
            disk=DiskTier(tmp_path / "cache", max_bytes="16MiB"),
        )
    raise ValueError(kind)


@pytest.fixture
def obstore_at(request):
    """A function: prefix -> zarr ObjectStore on obstore's S3Store in the test bucket."""
    endpoint = request.getfixturevalue("s3_endpoint")
    return lambda prefix: obstore_store(endpoint, request, prefix)


@pytest.fixture(params=KINDS)
def any_store(request, tmp_path):
    """A fresh checkpoint store of each kind: memory, local dir, S3 on moto (s3fs and
    obstore), replicated, tiered."""
    return make_store(request.param, tmp_path, request)


@pytest.fixture(params=["memory", "local", "s3", "obstore"])
def plain_store(request, tmp_path):
    """A fresh plain zarr store of each kind."""
    return make_store(request.param, tmp_path, request)


@pytest.fixture(params=["memory", "local", "s3", "obstore", "replicated"])
def racing_store(request, tmp_path):
    """Every store kind whose manifest commit is atomic (ReplicatedStore: by quorum)."""
    return make_store(request.param, tmp_path, request)
