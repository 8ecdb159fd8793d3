"""Check NVML detection and GPU placement on a machine with NVIDIA GPUs; print what was seen.

Usage: ``python benchmarks/gpu_check.py [--simulate]`` (swarmstore installed, for example
``pip install -e .`` in a checkout). Exit status 0 when every check passes, 1 otherwise;
finishes within about two minutes.

It starts a cluster of real processes with swarmstore's preloads (``plugins/scheduler.py`` on
the scheduler, ``plugins/worker.py`` on the workers): one GPU worker that sees every GPU and
one CPU worker started with ``CUDA_VISIBLE_DEVICES=""``. Then it checks that

1. NVML (``nvidia-ml-py``) finds the GPUs in this process and on the GPU worker;
2. the GPU worker declared ``GPU`` = number of GPUs and ``GPU_MEMORY`` = their memory, the
   CPU worker declared no GPU;
3. tasks annotated ``swarm={"gpu": 1}`` all ran on the GPU worker (and, when CuPy or PyTorch
   is installed, really computed on a GPU there), small CPU graphs ran on the CPU worker;
4. a task asking for more GPUs than any worker has fails with UnsatisfiableRequirements.

``--simulate`` (for machines without a GPU) declares one GPU on the GPU worker by hand and
skips the NVML checks; it exercises everything else.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time
from typing import Any

import dask
from distributed import Client, Nanny, Scheduler, SpecCluster

from swarmstore.compute.inventory import detect, inventory_of
from swarmstore.errors import UnsatisfiableRequirements

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRELOAD_SCHEDULER = str(ROOT / "plugins" / "scheduler.py")
PRELOAD_WORKER = str(ROOT / "plugins" / "worker.py")
DEADLINE_S = 110

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        failures.append(what)


def gpu_task(i: int) -> dict[str, Any]:
    """Runs on a worker: where am I, which GPUs do I see, can I compute on one?"""
    from distributed import get_worker

    out: dict[str, Any] = {
        "worker": get_worker().address,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "computed_on": None,
    }
    try:
        import cupy

        out["computed_on"] = f"cupy device {cupy.cuda.Device().id}: {float(cupy.arange(10).sum())}"
    except Exception:
        try:
            import torch

            if torch.cuda.is_available():
                x = torch.arange(10, device="cuda").sum().item()
                out["computed_on"] = f"torch {torch.cuda.get_device_name()}: {x}"
        except Exception:
            pass
    return out


def where(_: Any = None) -> str:
    from distributed import get_worker

    return get_worker().address


def scheduler_view(dask_scheduler: Any) -> dict[str, Any]:
    plugin = dask_scheduler.plugins.get("swarmstore")
    out = {"plugins": sorted(dask_scheduler.plugins), "workers": {}}
    out["extensions"] = [type(e).__name__ for e in getattr(plugin, "extensions", [])]
    for addr, ws in dask_scheduler.workers.items():
        inv = inventory_of(dask_scheduler, addr)
        out["workers"][addr] = {
            "name": ws.name,
            "nthreads": ws.nthreads,
            "resources": dict(ws.resources),
            "gpus": [(g.index, g.name, g.memory_total) for g in inv.gpus] if inv else None,
            "gpu_status": inv.gpu_status if inv else "no inventory reported",
        }
    return out


def run(simulate: bool) -> None:
    print("== NVML in this process")
    local = detect()
    for g in local.gpus:
        print(
            f"  GPU {g.index}: {g.name}, {g.memory_total / 2**30:.1f} GiB "
            f"({g.memory_free / 2**30:.1f} free) {g.uuid}"
        )
    print(f"  status: {local.gpu_status}; {local.cpus} CPUs, {local.memory / 2**30:.1f} GiB RAM")
    if not simulate:
        check(len(local.gpus) > 0, "NVML finds at least one GPU")
        if not local.gpus:
            return

    gpu_opts: dict[str, Any] = {"nthreads": 2, "preload": [PRELOAD_WORKER], "name": "gpu-worker"}
    if simulate:
        gpu_opts["resources"] = {"GPU": 1, "GPU_MEMORY": 16 * 2**30}
    workers = {
        "gpu-worker": {"cls": Nanny, "options": gpu_opts},
        "cpu-worker": {
            "cls": Nanny,
            "options": {
                "nthreads": 2,
                "preload": [PRELOAD_WORKER],
                "name": "cpu-worker",
                "env": {"CUDA_VISIBLE_DEVICES": ""},
            },
        },
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"preload": [PRELOAD_SCHEDULER], "dashboard_address": ":0", "host": "127.0.0.1"},
    }
    env = {"swarmstore.compute.unsatisfiable-timeout": "3s"}
    with (
        dask.config.set(env),
        SpecCluster(workers=workers, scheduler=scheduler, asynchronous=False) as cluster,
        Client(cluster) as c,
    ):
        c.wait_for_workers(2, timeout=60)
        view = c.run_on_scheduler(scheduler_view)
        print("== scheduler")
        print(f"  plugins: {view['plugins']}; SwarmPlugin extensions: {view['extensions']}")
        check("swarmstore" in view["plugins"], "scheduler preload installed SwarmPlugin")
        by_name = {w["name"]: (addr, w) for addr, w in view["workers"].items()}
        for name, (addr, w) in sorted(by_name.items()):
            print(f"  {name} {addr}: {w['nthreads']} threads, resources {w['resources']}")
            print(f"    NVML: {w['gpu_status']}; GPUs {w['gpus']}")
        gpu_addr, gpu_w = by_name["gpu-worker"]
        cpu_addr, cpu_w = by_name["cpu-worker"]
        n_gpus = gpu_w["resources"].get("GPU", 0)
        if not simulate:
            check(
                gpu_w["gpus"] is not None and len(gpu_w["gpus"]) == len(local.gpus),
                f"GPU worker's NVML sees all {len(local.gpus)} GPU(s)",
            )
            check(n_gpus == len(local.gpus), "GPU worker declares GPU = number of GPUs")
            total = sum(g.memory_total for g in local.gpus)
            check(
                gpu_w["resources"].get("GPU_MEMORY") == total,
                f"GPU worker declares GPU_MEMORY = {total / 2**30:.1f} GiB",
            )
        check("GPU" not in cpu_w["resources"], "CPU worker (no visible GPU) declares no GPU")
        check("CPU" in cpu_w["resources"], "worker preload declared CPU resources")

        print("== placement")
        with dask.annotate(swarm={"gpu": 1}):
            futs = c.map(gpu_task, range(8), pure=False)
        results = c.gather(futs, errors="raise")
        ran = sorted({r["worker"] for r in results})
        print(f"  8 GPU tasks ran on: {ran}")
        visible = sorted({str(r["CUDA_VISIBLE_DEVICES"]) for r in results})
        print(f"  their CUDA_VISIBLE_DEVICES: {visible}")
        computed = sorted({r["computed_on"] for r in results if r["computed_on"]})
        print(f"  GPU compute: {computed or 'not tried (neither CuPy nor PyTorch with CUDA)'}")
        check(ran == [gpu_addr], "every GPU task ran on the GPU worker")
        cpu_ran = sorted(set(c.gather(c.map(where, range(6), pure=False))))
        print(f"  6 CPU tasks ran on: {cpu_ran}")
        check(cpu_ran == [cpu_addr], "small CPU graphs kept off the GPU worker")

        print("== unsatisfiable")
        with dask.annotate(swarm={"gpu": int(n_gpus) + 1}):
            bad = c.submit(where, pure=False)
        t0 = time.monotonic()
        try:
            bad.result(timeout=30)
            check(False, "a task asking for too many GPUs fails")
        except UnsatisfiableRequirements as e:
            print(f"  after {time.monotonic() - t0:.1f}s: {e}")
            check(True, "a task asking for too many GPUs fails with UnsatisfiableRequirements")
        except Exception as e:
            check(False, f"unexpected error for an unsatisfiable task: {e!r}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulate", action="store_true", help="no GPU here: declare one by hand")
    args = ap.parse_args(argv)
    for path in (PRELOAD_SCHEDULER, PRELOAD_WORKER):
        if not pathlib.Path(path).exists():
            print(f"missing {path}: run this script from a swarmstore checkout")
            return 1
    watchdog = threading.Timer(DEADLINE_S, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    t0 = time.monotonic()
    try:
        run(args.simulate)
    except Exception as e:
        check(False, f"gpu_check crashed: {e!r}")
    finally:
        watchdog.cancel()
    verdict = "PASS" if not failures else f"FAIL ({len(failures)}: {'; '.join(failures)})"
    print(f"== {verdict} in {time.monotonic() - t0:.1f}s")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
