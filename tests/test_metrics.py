"""swarmstore figures on Dask's Prometheus endpoint: counts, figures, samples, /metrics."""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
import urllib.request
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, Worker
from distributed.utils_test import async_poll_for, captured_logger, gen_cluster
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

import swarmstore
from swarmstore import metrics
from swarmstore.cache import TieredCachePlugin
from swarmstore.compute import SwarmPlugin
from swarmstore.compute._figures import PlacementCounts
from swarmstore.compute.placement import Placer, WorkerInfo
from swarmstore.compute.requirements import Requirements
from swarmstore.dataset import affinity_config, resolve_store, to_dask
from swarmstore.metrics import Family, SwarmCollector
from swarmstore.metrics import _core as core
from swarmstore.network import TransferRouter

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PROTO = default_buffer_prototype()


def values(samples: list[metrics.Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in samples if s.name == name}


def total(samples: list[metrics.Sample], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(s.value for s in samples if s.name == name and want <= set(s.labels))


# --------------------------------------------------------------------------- plain objects
def test_placement_counts_classify_each_kind_of_decision() -> None:
    placer = Placer()
    placer.add_worker(WorkerInfo("cpu-1", 2))
    placer.add_worker(WorkerInfo("gpu-1", 2, {"GPU": 1}))
    counts = PlacementCounts()

    def decide(req: Requirements | None) -> None:
        counts.decided(placer.decide(req))

    decide(Requirements(gpu=1))  # held: counted at dispatch, not here
    decide(None)  # a CPU task queued by the plugin, off the GPU worker's kept thread
    decide(Requirements(chunk="x/c/0"))
    decide(Requirements(chunk="x/c/1"))
    decide(Requirements(gpu=4))  # no worker declares 4 GPUs: counted by the watch
    counts.dispatched("gpu-1")
    counts.failed(3)
    assert counts.cpu_kept_off_gpu == 1
    assert sum(counts.affinity_pinned.values()) == 2
    assert set(counts.affinity_pinned) <= {"cpu-1", "gpu-1"}
    assert counts.gpu_dispatched == {"gpu-1": 1}
    assert counts.unsatisfiable_failed == 3
    assert "gpu=1" in repr(counts)


def test_a_chunk_pinned_to_the_only_cpu_worker_counts_as_a_pin() -> None:
    placer = Placer()
    placer.add_worker(WorkerInfo("cpu-1", 1))
    placer.add_worker(WorkerInfo("gpu-1", 1, {"GPU": 1}))
    counts = PlacementCounts()
    for i in range(20):
        counts.decided(placer.decide(Requirements(chunk=f"c/{i}")))
    assert counts.cpu_kept_off_gpu == 0 and sum(counts.affinity_pinned.values()) == 20


async def test_router_figures_quantiles_counts_circuits_and_lanes() -> None:
    router = TransferRouter(hedge=False, circuit_failures=2, circuit_reset=60)

    async def attempt(src: str) -> str:
        if src == "down":
            raise ConnectionError(src)
        await asyncio.sleep(0.001)
        return src

    for _ in range(5):
        await router.fetch(["down", "up"], attempt, name=str)
    f = metrics.router_figures(router)
    up, down = f["sources"]["up"], f["sources"]["down"]
    assert up["requests"] == 5 and up["failures"] == 0 and up["circuit"] == "closed"
    q = up["quantiles"]
    assert set(q) == {"0.5", "0.95", "0.99"} and 0 < q["0.5"] <= q["0.95"] <= q["0.99"] < 1
    assert down["circuit"] == "open" and down["failures"] == 2 and down["quantiles"] == {}
    assert set(f["classes"]) == {"interactive", "normal", "bulk"}
    from swarmstore.metrics import _bridges

    saved = _bridges._loaded_router
    _bridges._loaded_router = lambda: router
    try:
        samples = metrics.samples()
    finally:
        _bridges._loaded_router = saved
    key = (("process", metrics.PROCESS), ("source", "down"), ("state", "open"))
    assert values(samples, "router_circuit")[key] == 1.0
    assert total(samples, "router_circuit", source="down") == 1.0  # one state at a time
    assert total(samples, "router_requests", source="up") == 5


async def test_cache_figures_count_hits_misses_and_backing_reads() -> None:
    plugin = TieredCachePlugin(memory_bytes="4MiB", disk_dir="")
    backing = MemoryStore()
    await backing.set("k", PROTO.buffer.from_bytes(b"x" * 1000))
    store = plugin.cache_for(backing)
    for _ in range(3):
        await store.get("k", PROTO)
    f = metrics.cache_figures(plugin)
    assert f["memory"]["hits"] == 2 and f["memory"]["misses"] == 1
    assert f["memory"]["bytes"] >= 1000 and f["memory"]["max_bytes"] == 4 * 2**20
    assert f["backing"] == {"reads": 1, "bytes": 1000, "errors": 0}
    assert "disk" not in f

    class FakeWorker:
        address = "w1"
        metrics: dict = {}

    w = FakeWorker()
    metrics.track_worker(w, plugin)
    try:
        samples = metrics.samples(worker=w)
        assert values(samples, "cache_hits") == {(("worker", "w1"), ("tier", "memory")): 2.0}
        assert total(samples, "cache_backing_read_bytes", worker="w1") == 1000
        beat = w.metrics[metrics.HEARTBEAT_KEY](w)
        assert beat["process"] == metrics.PROCESS and "cache_hits" in beat["families"]
    finally:
        metrics.unregister_source(f"cache@{id(w)}")


def test_samples_render_as_prometheus_text() -> None:
    registry = prometheus_client.CollectorRegistry()

    class Fixed(SwarmCollector):
        def samples(self) -> list[metrics.Sample]:
            return [
                metrics.Sample("cache_hits", (("worker", "w1"), ("tier", "disk")), 7.0),
                metrics.Sample("placement_gpu_queued", (), 2.0),
            ]

    registry.register(Fixed())
    text = prometheus_client.generate_latest(registry).decode()
    assert 'swarmstore_cache_hits_total{tier="disk",worker="w1"} 7.0' in text
    assert "swarmstore_placement_gpu_queued 2.0" in text
    assert "# TYPE swarmstore_router_latency_seconds gauge" in text
    # every family is claimed, so another collector cannot reuse a name unnoticed
    with pytest.raises(ValueError, match="swarmstore_cache_hits"):
        registry.register(Fixed())


def test_register_source_labels_weak_methods_and_conflicts() -> None:
    fams = [Family("t_plain", "gauge", "t"), Family("t_lab", "counter", "t", ("a", "b"))]

    class Owner:
        def figures(self) -> dict:
            return {"t_plain": 3, "t_lab": {("x", "y"): 1, ("x", "z"): 2}}

    owner = Owner()
    metrics.register_source("test-src", owner.figures, fams, owner=owner)
    got = metrics.owner_samples(owner)
    assert values(got, "t_plain") == {(): 3.0}
    assert values(got, "t_lab") == {(("a", "x"), ("b", "y")): 1.0, (("a", "x"), ("b", "z")): 2.0}
    with pytest.raises(ValueError, match="declared twice"):
        metrics.register_source("other", dict, [Family("t_lab", "gauge", "t", ("a",))])
    del owner, got  # a bound method is held weakly: the source goes with its object
    assert not [x for x in metrics.samples() if x.name == "t_plain"]
    assert "test-src" not in core._sources


def test_a_failing_source_is_logged_once_and_skipped() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    metrics.register_source("broken", broken, [Family("t_broken", "gauge", "t")])
    try:
        with captured_logger("swarmstore.metrics") as log:
            assert metrics.samples(owner=None) is not None
            metrics.samples()
        assert log.getvalue().count("source broken failed") == 1
    finally:
        metrics.unregister_source("broken")


def test_metrics_is_a_leaf() -> None:
    """The metrics package imports no capability (compute, cache, storage, network ...)."""
    import ast

    allowed = {"swarmstore", "swarmstore.config", "swarmstore._events"}
    root = pathlib.Path(metrics.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("swarmstore") and not name.startswith("swarmstore.metrics"):
                    assert name in allowed, f"{path.name} imports {name}"


# --------------------------------------------------------------------------- on a cluster
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1, {"resources": {"GPU": 1}})],
    config={"swarmstore.metrics.interval": "0s"},
)
async def test_scheduler_figures_follow_a_mixed_workload(c, s, a, b) -> None:
    await c.register_plugin(SwarmPlugin())
    await c.register_plugin(TieredCachePlugin(memory_bytes="8MiB", disk_dir=""))
    plugin = s.plugins["swarmstore"]
    gpu = [c.submit(lambda x: x + 1, i, resources={"GPU": 1}, pure=False) for i in range(5)]
    with dask.annotate(swarm={"critical": True}):
        crit = c.submit(lambda: 42, pure=False)
    assert await c.gather(gpu) == [1, 2, 3, 4, 5] and await crit == 42
    cpu = c.submit(lambda x: -x, gpu[0], pure=False)  # depends on a GPU result: not root-ish
    assert await cpu == -1
    s.log_event("swarmstore", {"action": "example"})
    await async_poll_for(lambda: len(s.tasks[crit.key].who_has) == 2, timeout=5)

    samples = metrics.collector().samples()
    assert values(samples, "placement_gpu_dispatched") == {(("worker", b.address),): 5.0}
    assert total(samples, "placement_cpu_kept_off_gpu") == 2  # crit and cpu (not root-ish)
    assert total(samples, "gpu_slots", worker=b.address) == 1
    assert total(samples, "gpu_committed", worker=b.address) == 0  # all finished
    assert total(samples, "replication_tracked_keys") == 1
    assert total(samples, "replication_under_replicated_keys") == 0
    assert total(samples, "replication_requested") >= 1
    assert total(samples, "events", action="example") == 1
    assert {dict(lab)["worker"] for lab in values(samples, "worker_process")} == {
        a.address,
        b.address,
    }
    assert plugin.placements.gpu_dispatched[b.address] == 5


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], config={"swarmstore.metrics.interval": "0s"})
async def test_workers_send_their_figures_with_heartbeats(c, s, a) -> None:
    await c.register_plugin(SwarmPlugin())
    await c.register_plugin(TieredCachePlugin(memory_bytes="8MiB", disk_dir=""))

    async def read_twice(backing: Any) -> None:  # runs on the worker's event loop
        from swarmstore.cache import worker_cache

        store = worker_cache(backing)
        await store.set("k", PROTO.buffer.from_bytes(b"abc"))
        for _ in range(2):
            await store.get("k", PROTO)

    def memory_hits() -> list[float]:
        beat = s.workers[a.address].metrics.get(metrics.HEARTBEAT_KEY) or {}
        return [
            v
            for n, lab, v in beat.get("samples", ())  # msgpack turns the lists into tuples
            if n == "cache_hits" and ("tier", "memory") in map(tuple, lab)
        ]

    # poll with a deadline: on a saturated machine the RAM tier may not hold the value by
    # the second read of the first round (a saturated run saw 0 hits)
    deadline = time.monotonic() + 60
    while True:
        await c.submit(read_twice, MemoryStore(), pure=False)
        await a.heartbeat()
        hits = memory_hits()
        if (hits and hits[0] >= 1) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    beat = s.workers[a.address].metrics[metrics.HEARTBEAT_KEY]
    assert beat["process"] == metrics.PROCESS
    assert hits and hits[0] >= 1
    assert beat["families"]["cache_hits"][0] == "counter"
    # a process that knows the scheduler but not the worker reads the heartbeat
    core._workers.discard(a)
    try:
        samples = SwarmCollector().samples()
    finally:
        core._workers.add(a)
    assert total(samples, "cache_hits", worker=a.address, tier="memory") >= 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_a_broken_section_is_skipped_and_logged_once(c, s, a) -> None:
    await c.register_plugin(SwarmPlugin())
    await c.register_plugin(TieredCachePlugin(memory_bytes="8MiB", disk_dir=""))
    collector = SwarmCollector()
    plugin = s.plugins["swarmstore"]
    placer, plugin.placer = plugin.placer, None  # a bug in the scheduler's placement source
    try:
        with captured_logger("swarmstore.metrics") as log:
            for _ in range(2):
                families = collector.collect()
                names = {f.name for f in families if f.samples}
                assert "swarmstore_cache_hits" in names  # other sources still report
                assert "swarmstore_placement_gpu_queued" not in names
        assert log.getvalue().count(f"source placement@{id(plugin)} failed") == 1
    finally:
        plugin.placer = placer


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_without_prometheus_client_nothing_is_registered(c, s, a) -> None:
    # as if prometheus_client were not installed (the cluster's own routes are built already)
    saved = sys.modules["prometheus_client"], core._collector, core._registered
    sys.modules["prometheus_client"] = None  # type: ignore[assignment]
    core._collector, core._registered = None, False
    try:
        await c.register_plugin(SwarmPlugin())
        await c.register_plugin(TieredCachePlugin(memory_bytes="8MiB", disk_dir=""))
        assert not metrics.is_registered()
        assert metrics.owner_samples(s)  # sources registered all the same
        assert metrics.HEARTBEAT_KEY in a.metrics  # heartbeats still carry the figures
        await a.heartbeat()
        assert s.workers[a.address].metrics[metrics.HEARTBEAT_KEY]["samples"]
    finally:
        sys.modules["prometheus_client"], core._collector, core._registered = saved


# --------------------------------------------------------------------------- /metrics over HTTP
def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_values(family: Any, suffix: str = "", **labels: str) -> list[float]:
    return [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and labels.items() <= s.labels.items()
    ]


async def test_scheduler_metrics_endpoint_shows_swarmstore_families(tmp_path: pathlib.Path) -> None:
    nodes = [f"file://{tmp_path / n}" for n in ("n1", "n2")]
    cfg = {
        "swarmstore.storage.state-dir": str(tmp_path / "st"),
        "swarmstore.metrics.interval": 0,
        # chunk pins are loose: stealing could move a second-pass read off its cache
        "distributed.scheduler.work-stealing": False,
    }
    with dask.config.set(cfg):
        writer = zarr.create_array(resolve_store(nodes), shape=(40,), chunks=(10,), dtype="i4")
        writer[:] = np.arange(40)
        async with (
            LocalCluster(
                processes=False,
                n_workers=1,
                threads_per_worker=1,
                resources={"GPU": 1},
                dashboard_address="127.0.0.1:0",
                asynchronous=True,
            ) as cluster,
            Worker(cluster.scheduler_address, nthreads=1) as cpu,
            Client(cluster, asynchronous=True) as c,
        ):
            (gpu,) = (a for a in cluster.scheduler.workers if a != cpu.address)
            await c.register_plugin(SwarmPlugin())
            await c.register_plugin(TieredCachePlugin(memory_bytes="8MiB", disk_dir=""))
            futs = [c.submit(lambda x: x * 2, i, resources={"GPU": 1}) for i in range(4)]
            assert await c.gather(futs) == [0, 2, 4, 6]
            z = swarmstore.open_array(nodes)
            with affinity_config():
                for i in range(2):  # two graphs: the second reads every chunk again
                    x = to_dask(z, name=f"read-pass-{i}")
                    assert await c.compute(x.sum()) == sum(range(40))
            port = cluster.scheduler.http_server.port
            fams = await asyncio.to_thread(scrape, port)

    dispatched = fams["swarmstore_placement_gpu_dispatched"]
    assert sample_values(dispatched, "_total", worker=gpu) == [4.0]
    pinned = fams["swarmstore_placement_affinity_pinned"]
    assert sum(sample_values(pinned, "_total")) == 8  # 4 chunks, 2 passes
    hits = sum(sample_values(fams["swarmstore_cache_hits"], "_total", tier="memory"))
    misses = sum(sample_values(fams["swarmstore_cache_misses"], "_total", tier="memory"))
    reads = sum(sample_values(fams["swarmstore_cache_backing_reads"], "_total"))
    # every chunk read of both passes went through a worker's cache; each miss read the
    # nodes once. (Hits on the second pass are not asserted: in a one-process cluster a
    # graph's ChunkReader is shared by both workers and binds to the first one's cache.)
    assert hits + misses == 8 and reads == misses >= 4
    # the router is process-wide: other tests' sources may be on it too; ours are named
    requests = fams["swarmstore_router_requests"]
    ours = [
        s for s in requests.samples if s.labels["source"] in nodes and s.name.endswith("_total")
    ]
    assert ours, "no router samples labelled with this test's node URLs"
    assert sum(s.value for s in ours) >= 4  # the first pass's chunk reads
    latency = fams["swarmstore_router_latency_seconds"]
    p99 = [s.value for s in latency.samples if s.labels.get("quantile") == "0.99"]
    assert p99 and all(v > 0 for v in p99)
    assert sample_values(fams["swarmstore_placement_gpu_queued"]) == [0.0]
