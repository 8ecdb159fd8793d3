"""errors.is_transport_error: transport failures of every backend read as "unreachable"."""

from __future__ import annotations

import errno

import aiohttp
import botocore.exceptions as be
import pytest

from swarmstore.errors import (
    ChecksumMismatch,
    NodeUnavailable,
    QuorumError,
    as_node_unavailable,
    is_transport_error,
)

TRANSPORT = [
    be.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    be.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    be.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    aiohttp.ClientConnectionError(),
    aiohttp.ServerDisconnectedError(),
    ConnectionResetError(),
    TimeoutError(),
    OSError(errno.EIO, "I/O error"),
    OSError("s3fs: service unavailable"),
    be.ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"),
    be.ClientError({"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Get"),
    NodeUnavailable("n0 down"),
]
ANSWERS = [
    FileNotFoundError("k"),
    FileExistsError("k"),
    PermissionError("k"),
    OSError(errno.ENOSPC, "disk full"),
    ChecksumMismatch("block 0"),
    QuorumError("k", 1, 2, {}),
    ValueError("bad key"),
    KeyError("k"),
    be.ParamValidationError(report="bad"),
    be.ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"),
]


@pytest.mark.parametrize("exc", TRANSPORT, ids=lambda e: type(e).__name__)
def test_transport_errors(exc):
    assert is_transport_error(exc)
    wrapped = as_node_unavailable(exc, "n0")
    assert isinstance(wrapped, NodeUnavailable)
    assert "n0" in str(wrapped) or wrapped is exc


@pytest.mark.parametrize("exc", ANSWERS, ids=lambda e: type(e).__name__)
def test_answers_are_not_transport_errors(exc):
    assert not is_transport_error(exc)
    assert as_node_unavailable(exc, "n0") is exc
