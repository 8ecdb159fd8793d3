"""Worker inventory: NVML detection (degrading without GPUs), CUDA_VISIBLE_DEVICES, resources."""

from __future__ import annotations

import dask
import pytest
from distributed import Worker
from distributed.utils_test import async_poll_for, gen_cluster

from swarmstore.compute import SwarmPlugin
from swarmstore.compute.inventory import (
    GPUInfo,
    Inventory,
    InventoryPlugin,
    detect,
    detect_gpus,
    inventory_of,
    visible_devices,
)

GiB = 2**30


def where(_: object) -> str:
    from distributed import get_worker

    return get_worker().address


def two_gpus() -> list[GPUInfo]:
    """A detector standing in for NVML on a machine with two GPUs (test seam)."""
    return [
        GPUInfo(0, "Fake A100", 40 * GiB, 39 * GiB, "GPU-aaaa-1111"),
        GPUInfo(1, "Fake A100", 40 * GiB, 40 * GiB, "GPU-bbbb-2222"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", []),
        ("-1", []),
        ("0", ["0"]),
        ("1,0", ["1", "0"]),
        ("0, 1", ["0", "1"]),
        ("0,-1,1", ["0"]),
        ("GPU-bbbb", ["GPU-bbbb"]),
    ],
)
def test_visible_devices(value, expected):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_devices(env) == expected


@pytest.mark.parametrize(
    ("value", "indices"),
    [
        (None, [0, 1]),
        ("1", [1]),
        ("1,0", [1, 0]),
        ("GPU-bbbb", [1]),
        ("GPU-aaaa-1111,1", [0, 1]),
        ("2,0", []),  # CUDA stops at the first invalid entry
        ("0,7,1", [0]),
        ("0,0", [0]),  # a duplicate is invalid
        ("GPU-", []),  # ambiguous prefix
        ("", []),
    ],
)
def test_detect_gpus_honours_cuda_visible_devices(value, indices):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    gpus, status = detect_gpus(two_gpus, env)
    assert [g.index for g in gpus] == indices
    assert ("hidden" in status) == (not indices)


def test_detect_without_gpu_is_cpu_only():
    """This machine has no GPU (and no NVML library): a clean CPU-only inventory."""
    inv = detect(nthreads=3)
    if inv.gpus:  # pragma: no cover - only on a GPU machine
        pytest.skip("GPUs present")
    assert inv.gpu_status != "ok"
    assert inv.resources() == {"CPU": 3.0}
    assert inv.cpus >= 1 and inv.memory > 0


def test_detect_disabled_by_config():
    with dask.config.set({"swarmstore.compute.detect-gpus": False}):
        inv = detect(detector=two_gpus, nthreads=1)
    assert inv.gpus == () and "disabled" in inv.gpu_status


def test_inventory_roundtrip_and_resources():
    inv = detect(detector=two_gpus, nthreads=4, memory=8 * GiB, env={})
    assert inv.resources() == {"CPU": 4.0, "GPU": 2.0, "GPU_MEMORY": float(80 * GiB)}
    assert Inventory.from_dict(inv.to_dict()) == inv


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 1, {"resources": {"GPU": 7}})])
async def test_plugin_declares_resources_on_running_workers(c, s, a, b):
    await c.register_plugin(InventoryPlugin(detector=two_gpus))
    await async_poll_for(lambda: "GPU_MEMORY" in s.workers[a.address].resources, timeout=5)
    assert s.workers[a.address].resources == {"CPU": 2, "GPU": 2, "GPU_MEMORY": 80 * GiB}
    assert a.state.available_resources["GPU"] == 2
    # what the operator declared wins; the rest is added
    await async_poll_for(lambda: "CPU" in s.workers[b.address].resources, timeout=5)
    assert s.workers[b.address].resources["GPU"] == 7
    inv = inventory_of(s, a.address)
    assert inv is not None and [g.uuid for g in inv.gpus] == ["GPU-aaaa-1111", "GPU-bbbb-2222"]
    assert inventory_of(s, "tcp://nowhere:1") is None


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_plugin_on_cpu_only_worker(c, s, a):
    await c.register_plugin(InventoryPlugin())  # real NVML path: no GPU here
    await async_poll_for(lambda: "CPU" in s.workers[a.address].resources, timeout=5)
    if inventory_of(s, a.address).gpus:  # pragma: no cover - only on a GPU machine
        pytest.skip("GPUs present")
    assert "GPU" not in s.workers[a.address].resources


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_resources_declared_at_registration_drive_placement(c, s, a):
    await c.register_plugin(SwarmPlugin(extensions=()))
    async with Worker(s.address, nthreads=2, plugins={InventoryPlugin(detector=two_gpus)}) as w:
        assert s.workers[w.address].resources["GPU"] == 2  # part of the registration
        with dask.annotate(swarm={"gpu": 1, "gpu_memory": "30GiB"}):
            futs = c.map(where, range(6))
        assert set(await c.gather(futs)) == {w.address}
