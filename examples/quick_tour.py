# /// script
# requires-python = ">=3.12"
# dependencies = ["swarmstore", "xarray", "moto[server]"]
# ///
"""swarmstore quick tour, as a script: storage -> cache -> xarray -> Dask -> checkpoint.

Replicated storage over two local directories and S3 (moto on 127.0.0.1, started here),
a tiered cache read with ``xarray.open_zarr``, a computation placed by SwarmPlugin on a
LocalCluster with one (declared) GPU worker, and a checkpoint of the result opened again
with xarray. Prints one line per check and exits 1 if any check fails.

Run: ``python examples/quick_tour.py`` (or ``uv run examples/quick_tour.py``).
"""

from __future__ import annotations

import copy
import logging
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import dask
import numpy as np
import xarray as xr
from distributed import Client, LocalCluster, get_worker
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from swarmstore import SwarmPlugin
from swarmstore.cache import TieredStore
from swarmstore.checkpoint import CheckpointManager
from swarmstore.storage import NodeSpec, ReplicatedStore
from swarmstore.testing import moto_server

FAILED: list[str] = []


def check(what: str, ok: Any, detail: str = "") -> None:
    """Record and print one check."""
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f" ({detail})" if detail else ""))
    if not ok:
        FAILED.append(what)


def on_gpu(block: np.ndarray) -> np.ndarray:
    """The "GPU" step: runs only where SwarmPlugin sends GPU tasks."""
    if get_worker().name != "gpu":
        raise RuntimeError(f"GPU task ran on worker {get_worker().name!r}")
    return block - block.mean(axis=0)


def tour(root: pathlib.Path, s3: Any) -> None:
    # 1. storage: every chunk on 2 of 3 nodes, checksummed
    bucket = s3.make_bucket()
    nodes = [NodeSpec(f"file://{root}/node{i}", zone=f"rack{i}") for i in range(2)]
    nodes.append(
        NodeSpec(FsspecStore(s3.filesystem(asynchronous=True), path=f"{bucket}/node2"), zone="s3")
    )
    store = ReplicatedStore(nodes, replicas=2, state_dir=root / "state")
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"temperature": (("time", "y", "x"), rng.normal(15, 5, (24, 64, 64)).astype("f4"))},
        coords={"time": np.arange(24), "y": np.arange(64), "x": np.arange(64)},
    )
    ds.to_zarr(
        store,
        group="climate",
        mode="w",
        consolidated=False,
        encoding={"temperature": {"chunks": (6, 32, 32)}},
    )
    report = sync(store.scrub())
    check("storage: every replica verified after the write", report.ok, f"{report.healthy} keys")

    # 2. cache + xarray
    cache = TieredStore(store, memory_bytes="64MiB", disk=root / "cache")
    opened = xr.open_zarr(cache, group="climate", consolidated=False)
    check("xarray reads the dataset back through the cache", opened.compute().identical(ds))
    reads = cache.stats()["backing"]["reads"]
    xr.open_zarr(cache, group="climate", consolidated=False).load()
    check(
        "a second read is served from the cache",
        cache.stats()["backing"]["reads"] == reads,
        f"{cache.stats()['memory']['hits']} RAM hits",
    )

    # 3. compute: a CPU worker and a declared GPU worker
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        spec = copy.deepcopy(cluster.worker_spec[0])
        spec["options"]["resources"] = {"GPU": 1}
        cluster.worker_spec["gpu"] = spec
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2)
            client.register_plugin(SwarmPlugin())
            data = opened.temperature.data.rechunk((24, 32, 32))
            with dask.annotate(swarm={"gpu": 1}):
                anomaly = client.persist(data.map_blocks(on_gpu, dtype="f4"))
            expected = ds.temperature.values - ds.temperature.values.mean(axis=0)
            check(
                "GPU-annotated blocks ran on the GPU worker, results right",
                np.allclose(anomaly.compute(), expected, atol=1e-5),
            )

            # 4. checkpoint: written by the workers holding the blocks
            mgr = CheckpointManager(store, keep_last=2)
            info = mgr.save(
                {"anomaly": anomaly},
                step=1,
                metadata={"source": "tour"},
                encoding={"anomaly": {"dimension_names": ("time", "y", "x")}},
            )
            back = xr.open_zarr(mgr.open_store(1), consolidated=False)
            check(
                "checkpoint restored and opened with xarray",
                np.allclose(back["anomaly"].values, expected, atol=1e-5),
                f"step {info.step}: {info.written_objects} objects",
            )
    cache.close()
    sync(store.aclose())


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log
    root = pathlib.Path(tempfile.mkdtemp(prefix="swarmstore-tour-"))
    try:
        with moto_server() as s3:
            tour(root, s3)
    except Exception as e:
        check("the tour ran to the end", False, repr(e))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("all checks held" if not FAILED else f"{len(FAILED)} check(s) FAILED")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
