"""botocore settings for S3 nodes that leave every decision about a node to the router."""

from __future__ import annotations

from typing import Any

from swarmstore import config

__all__ = ["s3_config_kwargs"]

_UNLIMITED_POOL = 64  # connections per node when the lanes set no per-source limit


def s3_config_kwargs(source_concurrency: int | None = None) -> dict[str, Any]:
    """``config_kwargs`` for an S3 node's client (s3fs ``config_kwargs=``, ``botocore.Config``).

    - ``max_pool_connections`` is the per-source lane capacity (``source_concurrency``,
      default ``network.source-concurrency``): the lanes admit no more requests than the
      pool has connections, so no request ever waits inside the pool, where QoS classes
      no longer apply (aiobotocore's default pool of 10 is smaller than the default 16
      lanes). :meth:`TransferRouter.s3_config_kwargs` sizes it from that router's lanes;
    - ``retries`` is one attempt: a retry inside botocore hides a dead node from the
      router for seconds; the router fails over to another replica instead;
    - ``connect_timeout`` / ``read_timeout`` (``network.s3-connect-timeout``,
      ``network.s3-read-timeout``) are backstops behind the router's deadlines, for the
      last replica, which has no deadline.

    Two retry loops are outside botocore: s3fs's (``S3FileSystem.retries``, 5 with
    backoff: set ``fs.retries = 1`` on a node's filesystem) and aiohttp's, which resends an
    idempotent request once, at once, on a reset connection (fixed in aiohttp 3.14).

    Examples
    --------
    >>> kw = s3_config_kwargs(source_concurrency=16)
    >>> kw["max_pool_connections"], kw["retries"]["total_max_attempts"]
    (16, 1)
    """
    lanes = config.value("network.source-concurrency", source_concurrency)
    return _kwargs(
        lanes, config.value("network.s3-connect-timeout"), config.value("network.s3-read-timeout")
    )


def _kwargs(lanes: int | None, connect: float, read: float) -> dict[str, Any]:
    return {
        "max_pool_connections": lanes or _UNLIMITED_POOL,
        "connect_timeout": connect,
        "read_timeout": read,
        "retries": {"total_max_attempts": 1, "mode": "standard"},  # the initial request only
    }
