"""The router's own figures reach the metrics layer: hedges won, ejections, expected vs observed."""

from swarmstore import metrics
from swarmstore.network import default_router, reset_default_router


def values(name):
    return {dict(s.labels)["source"]: s.value for s in metrics.samples() if s.name == name}


async def test_ejections_and_expected_vs_observed_are_published():
    reset_default_router()
    assert values("router_ejections") == {}  # no router yet: nothing, and none created
    router = default_router()

    async def attempt(src):
        if src == "down":
            raise ConnectionError(src)
        return b"x" * 100

    for _ in range(8):
        await router.fetch(["down", "up"], attempt, name=str)
    assert values("router_ejections") == {"down": 1.0, "up": 0.0}
    assert values("router_deadline_misses")["up"] == 0.0
    assert values("router_observed_seconds")["up"] > 0
    assert "up" in values("router_expected_seconds") and "down" not in values(
        "router_observed_seconds"
    )
    reset_default_router()


async def test_hedges_issued_and_won_are_published_per_source():
    """A hung first source is overtaken by a hedge: /metrics counts the hedge issued at the
    source it went to, and its win there."""
    import asyncio

    import dask

    reset_default_router()
    gate = asyncio.Event()
    with dask.config.set(
        {"swarmstore.network.hedge-budget": 1.0, "swarmstore.network.hedge-min-samples": 5}
    ):
        router = default_router()

    async def attempt(src):
        if src == "slow" and gate.is_set():
            await asyncio.Event().wait()  # hangs until cancelled
        return b"x" * 100

    try:
        for _ in range(10):  # both learned fast; "slow" first in the caller's order
            for nm in ("slow", "fast"):
                router.observe(nm, 0.001, 100)
        gate.set()
        src, _, _ = await router.fetch(["slow", "fast"], attempt, name=str)
        assert src == "fast"
        assert values("router_hedges") == {"slow": 0.0, "fast": 1.0}
        assert values("router_hedge_wins") == {"slow": 0.0, "fast": 1.0}
    finally:
        await router.close()
        reset_default_router()
