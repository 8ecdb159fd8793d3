"""The preload path: plugins/scheduler.py and plugins/worker.py on real processes, and on TLS."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import dask
import pytest
from distributed import Client, LocalCluster, Security

from swarmstore.compute.inventory import inventory_of

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHED_PRELOAD = str(ROOT / "plugins" / "scheduler.py")
WORKER_PRELOAD = str(ROOT / "plugins" / "worker.py")
DASK = str(pathlib.Path(sys.executable).parent / "dask")


def where(_: object = None) -> str:
    from distributed import get_worker

    return get_worker().address


def scheduler_view(dask_scheduler) -> dict:
    return {
        "plugins": list(dask_scheduler.plugins),
        "extensions": [type(e).__name__ for e in dask_scheduler.plugins["swarmstore"].extensions],
        "resources": {a: dict(ws.resources) for a, ws in dask_scheduler.workers.items()},
        "inventories": {
            a: inventory_of(dask_scheduler, a) is not None for a in dask_scheduler.workers
        },
    }


def inc_block(b):
    return b + 1


def annotated_gpu_tasks(dask_scheduler, prefix: str) -> int:
    """How many live tasks named ``prefix-...`` arrived with a GPU requirement."""
    plugin = dask_scheduler.plugins["swarmstore"]
    return sum(
        r.gpu == 1 and str(k[0] if isinstance(k, tuple) else k).startswith(prefix)
        for k, r in plugin.requirements.items()
    )


def worker_plugins(dask_worker) -> list[str]:
    return sorted(dask_worker.plugins)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        for pipe in (p.stdout, p.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_preload_on_real_processes(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    env = {
        **os.environ,
        "DASK_SWARMSTORE__COMPUTE__UNSATISFIABLE_TIMEOUT": "1s",
        # the helpers below are pickled by reference: make this module importable there
        "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parent), str(ROOT)]),
    }
    common = {"env": env, "cwd": tmp_path, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(sched_file),
                    "--preload",
                    SCHED_PRELOAD,
                ],
                **common,
            )
        )
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--preload",
                    WORKER_PRELOAD,
                    "--resources",
                    "GPU=1",
                ],
                **common,
            )
        )
        with Client(address, timeout=30) as c:
            c.wait_for_workers(1, timeout=30)
            view = c.run_on_scheduler(scheduler_view)
            assert "swarmstore" in view["plugins"]
            assert view["extensions"] == ["ReplicationController"]
            assert all("CPU" in r for r in view["resources"].values())  # inventory declared
            assert all(view["inventories"].values())
            for plugins in c.run(worker_plugins).values():
                assert {"swarmstore-inventory", "swarmstore-cache"} <= set(plugins)
            gpu_worker = next(a for a, r in view["resources"].items() if r.get("GPU"))
            with dask.annotate(swarm={"gpu": 1}):
                futs = c.map(where, range(4), pure=False)
            assert set(c.gather(futs)) == {gpu_worker}
            # a dask.array graph: the scheduler materialises (and would fuse) it; the
            # annotations must survive that (dask/dask#7036)
            import dask.array as da

            with dask.annotate(swarm={"gpu": 1, "priority": "high"}):
                arr = da.ones(8, chunks=2).map_blocks(inc_block, dtype=float)
            arr = c.persist(arr)
            assert float(arr.sum().compute()) == 16.0
            assert c.run_on_scheduler(annotated_gpu_tasks, prefix="inc_block") == 4
            with dask.annotate(swarm={"gpu": 2}):  # no worker has 2 GPUs
                bad = c.submit(where, pure=False)
            with pytest.raises(Exception, match="no worker of 1 can give them") as info:
                bad.result(timeout=30)
            assert type(info.value).__name__ == "UnsatisfiableRequirements"
    finally:
        _stop(procs)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_preload_on_tls_cluster():
    sec = Security.temporary()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            protocol="tls://",
            host="127.0.0.1",
            security=sec,
            dashboard_address=":0",
            scheduler_kwargs={"preload": [SCHED_PRELOAD]},
            preload=[WORKER_PRELOAD],
        ) as cluster,
        Client(cluster, security=sec) as c,
    ):
        assert cluster.scheduler_address.startswith("tls://")
        view = c.run_on_scheduler(scheduler_view)
        assert "swarmstore" in view["plugins"]
        assert all("CPU" in r for r in view["resources"].values())
        assert all(view["inventories"].values())
        chunks = [f"t/c/{i}" for i in range(8)]
        first, second = [], []
        for out in (first, second):
            for ck in chunks:
                with dask.annotate(swarm={"chunk": ck}):
                    out.append(c.submit(where, ck, pure=False))
        assert c.gather(first) == c.gather(second)  # affinity holds across passes
