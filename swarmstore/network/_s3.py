"""botocore settings for S3 nodes that leave every decision about a node to the router."""

from __future__ import annotations

from typing import Any

from swarmstore import config

__all__ = ["s3_config_kwargs"]

_UNLIMITED_POOL = 64  # connections per node when the lanes set no per-source limit


def s3_config_kwargs(source_concurrency: int | None = None) -> dict[str, Any]:
    """``config_kwargs`` for an S3 node's client (s3fs ``config_kwargs=``, ``botocore.Config``).

    - ``max_pool_connections`` is the router's per-source lane capacity
      (``network.source-concurrency``): the lanes admit no more requests than the pool
      has connections, so no request ever waits inside the pool, where QoS classes no
      longer apply (aiobotocore's default pool of 10 is smaller than the default 16 lanes);
    - ``retries`` is one attempt: a retry inside botocore hides a dead node from the
      router for seconds; the router fails over to another replica instead;
    - ``connect_timeout`` / ``read_timeout`` (``network.s3-connect-timeout``,
      ``network.s3-read-timeout``) are backstops behind the router's deadlines, for the
      last replica, which has no deadline.

    s3fs retries some errors itself as well (``S3FileSystem.retries``, 5 by default, with
    backoff): set ``fs.retries = 1`` on the filesystem of a node.

    Examples
    --------
    >>> kw = s3_config_kwargs(source_concurrency=16)
    >>> kw["max_pool_connections"], kw["retries"]["max_attempts"]
    (16, 1)
    """
    if source_concurrency is None:
        source_concurrency = int(config.get("network.source-concurrency") or 0)
    return {
        "max_pool_connections": source_concurrency or _UNLIMITED_POOL,
        "connect_timeout": config.get_seconds("network.s3-connect-timeout"),
        "read_timeout": config.get_seconds("network.s3-read-timeout"),
        "retries": {"max_attempts": 1, "mode": "standard"},
    }
