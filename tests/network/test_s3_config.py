"""s3_config_kwargs: the pool sized from the lanes, and no retry that hides a dead node."""

import pytest

from swarmstore.errors import is_transport_error
from swarmstore.network import TransferRouter, s3_config_kwargs
from swarmstore.testing.proxy import Proxy


def test_pool_follows_the_lanes_and_botocore_makes_one_attempt():
    kw = s3_config_kwargs()
    assert kw["max_pool_connections"] == 16  # network.source-concurrency
    assert TransferRouter(source_concurrency=5).s3_config_kwargs()["max_pool_connections"] == 5
    from botocore.config import Config

    # botocore's "max_attempts" counts retries, not attempts: max_attempts=1 meant two
    assert Config(**kw).retries["total_max_attempts"] == 1


async def test_a_dead_node_costs_at_most_two_connections_per_request(s3_endpoint, s3_bucket):
    """Measured: botocore's defaults made 4 connections and up to 1 s per failed GET."""
    import s3fs

    s3_endpoint.filesystem().pipe(f"{s3_bucket}/k", b"x" * 100)
    with Proxy(s3_endpoint.url) as link:
        options = {**s3_endpoint.storage_options(), "endpoint_url": link.url}
        fs = s3fs.S3FileSystem(
            **options, asynchronous=True, skip_instance_cache=True, config_kwargs=s3_config_kwargs()
        )
        fs.retries = 1
        await fs.set_session()
        try:
            await fs._call_s3("get_object", Bucket=s3_bucket, Key="k")
            link.kill()
            for i in range(1, 5):
                with pytest.raises(Exception) as info:
                    await fs._call_s3("get_object", Bucket=s3_bucket, Key="k")
                assert is_transport_error(info.value)
                # one attempt; aiohttp may resend an idempotent request once, at once
                assert link.counters.refused <= 2 * i
        finally:
            await fs.s3.close()
