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
