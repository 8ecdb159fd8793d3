"""Checks beyond distributed's own tests that pass on stock Dask and must pass with SwarmPlugin.

Issue 23's independent run found three behaviours where a scheduler carrying SwarmPlugin
stops being the stock scheduler a user expects. Each check runs twice on an in-process
cluster, stock and with ``SwarmPlugin()`` registered, and asserts the stock behaviour.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dask
import pytest
from distributed import Worker
from distributed.utils_test import async_poll_for, gen_cluster, inc

from swarmstore.compute import SwarmPlugin

STOCK_AND_SWARM = [
    pytest.param("stock", id="stock"),
    pytest.param("swarm", id="swarm"),
]


async def _install(mode: str, c: Any) -> None:
    if mode == "swarm":
        await c.register_plugin(SwarmPlugin())


def _running_amms(s: Any) -> list[Any]:
    """Every Active Memory Manager running on ``s``: the scheduler's own, and any other
    started by a plugin (each is an ``ActiveMemoryManagerExtension`` with a periodic run)."""
    from distributed.active_memory_manager import ActiveMemoryManagerExtension

    found = [e for e in s.extensions.values() if isinstance(e, ActiveMemoryManagerExtension)]
    for plugin in s.plugins.values():
        for ext in getattr(plugin, "extensions", ()):
            manager = getattr(ext, "manager", None)
            if isinstance(manager, ActiveMemoryManagerExtension):
                found.append(manager)
    return [m for m in found if m.running]


@pytest.mark.parametrize("mode", STOCK_AND_SWARM)
def test_amm_off_means_no_trimming(mode: str) -> None:
    """``active-memory-manager.start: False``: copies made by ``replicate`` stay."""

    @gen_cluster(
        client=True,
        nthreads=[("", 1)] * 3,
        config={"distributed.scheduler.active-memory-manager.start": False},
    )
    async def check(c: Any, s: Any, *workers: Any) -> None:
        await _install(mode, c)
        x = c.submit(inc, 1, key="x")
        await c.replicate(x, n=3)
        await async_poll_for(lambda: len(s.tasks["x"].who_has) == 3, timeout=10)
        for amm in _running_amms(s):  # what would run next, run now: the scheduler
            amm.run_once()  # forgets dropped replicas at once (request_remove_replicas)
        assert len(s.tasks["x"].who_has) == 3
        del x

    check()


@pytest.mark.parametrize("mode", STOCK_AND_SWARM)
def test_fusion_setting_stays_on_the_scheduler(mode: str) -> None:
    """A client in the scheduler's process keeps the fusion setting it had."""
    before = dask.config.get("optimization.fuse.active", None)

    @gen_cluster(client=True, nthreads=[("", 1)])
    async def check(c: Any, s: Any, a: Any) -> None:
        await _install(mode, c)
        assert dask.config.get("optimization.fuse.active", None) == before

    check()


@pytest.mark.parametrize(
    "mode",
    STOCK_AND_SWARM,
)
def test_task_on_a_resource_nobody_has_yet_waits_for_a_worker(mode: str) -> None:
    """A task asking ``{"X": 1}`` waits, past the unsatisfiable timeout, for a worker with X.

    The timeout is made short and the plugin's check is called directly after it has
    passed, so the check does not wait 30 s nor depend on when the periodic callback runs.
    """

    @gen_cluster(
        client=True,
        nthreads=[("", 1)],
        config={"swarmstore.compute.unsatisfiable-timeout": "0.2s"},
    )
    async def check(c: Any, s: Any, a: Any) -> None:
        await _install(mode, c)
        fut = c.submit(inc, 1, key="needs-x", resources={"X": 1})
        await async_poll_for(lambda: "needs-x" in s.tasks, timeout=10)
        await async_poll_for(lambda: s.tasks["needs-x"].state == "no-worker", timeout=10)
        plugin = s.plugins.get("swarmstore")
        if plugin is not None:
            plugin.check_unsatisfiable()  # first sight of the task: its wait starts
            await asyncio.sleep(0.4)  # twice the timeout passes
            plugin.check_unsatisfiable()
        assert s.tasks["needs-x"].state == "no-worker"
        async with Worker(s.address, nthreads=1, resources={"X": 1}):
            assert await fut == 2

    check()
