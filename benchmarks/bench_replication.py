"""Replication benchmark: wall time of a job whose worker is killed (kill -9) mid-run.

A LocalCluster with nannies (4 workers, 1 thread each) runs N critical tasks of D seconds
and a reduction over them; a worker holding finished results is killed once 60 % of them
are done. Each side runs once without and once with the kill, in the same process:

- swarm: ``client.register_plugin(SwarmPlugin())``; critical results are kept at 2 copies
- stock: plain Dask (its AMM with ReduceReplicas)

Recomputations are counted through scheduler transitions (processing -> memory more than
once for a key). Usage: ``python benchmarks/bench_replication.py [--quick]``. Lines (goals
against stock Dask, same run): wall time with the kill (<= 1.0x), the slowdown the kill
costs (<= 1.0x), and critical results recomputed (0: any recomputation MISSes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

import dask
from _results import Line, emit
from distributed import Client, LocalCluster, SchedulerPlugin, wait
from distributed.utils_test import poll_for

from swarmstore.compute import SwarmPlugin

NWORKERS = 4


def work(i: int, delay: float) -> int:
    time.sleep(delay)
    return i


def total(*values: int) -> int:
    return sum(values)


class Computed(SchedulerPlugin):
    name = "bench-computed"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.counts[key] += 1


def run_once(
    client: Client, cluster: LocalCluster, n: int, delay: float, kill: bool, tag: str
) -> tuple[float, int]:
    s = cluster.scheduler
    poll_for(lambda: len(s.workers) == NWORKERS, timeout=60)
    counter = Computed()
    s.add_plugin(counter, name=f"bench-computed-{tag}")
    keys = [f"part-{tag}-{i}" for i in range(n)]
    t0 = time.perf_counter()
    with dask.annotate(swarm={"critical": True}):
        parts = [client.submit(work, i, delay, key=k) for i, k in enumerate(keys)]
    final = client.submit(total, *parts, key=f"total-{tag}")
    if kill:

        def done() -> list:
            return [ts for k in keys if (ts := s.tasks.get(k)) is not None and ts.state == "memory"]

        poll_for(lambda: len(done()) >= 0.6 * n, timeout=120, period=0.01)
        held = Counter(ws.address for ts in done() for ws in ts.who_has)
        victim = held.most_common(1)[0][0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
    assert final.result(timeout=300) == sum(range(n))
    elapsed = time.perf_counter() - t0
    wait(parts)
    recomputed = sum(max(0, counter.counts[k] - 1) for k in keys)
    s.remove_plugin(name=f"bench-computed-{tag}")
    del parts, final
    return elapsed, recomputed


def side(swarm: bool, n: int, delay: float) -> tuple[float, float, int, int]:
    with (
        LocalCluster(
            n_workers=NWORKERS, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        if swarm:
            client.register_plugin(SwarmPlugin())
        client.submit(work, -1, 0.0, key="warmup").result()
        base, r0 = run_once(client, cluster, n, delay, False, "base")
        killed, r1 = run_once(client, cluster, n, delay, True, "kill")
    return base, killed, r0, r1


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n, delay = (16, 0.25) if quick else (40, 0.5)
    sw_base, sw_kill, _, sw_rec = side(True, n, delay)
    st_base, st_kill, _, st_rec = side(False, n, delay)
    raw = {"tasks": n, "delay_s": delay, "swarm_base_s": sw_base, "stock_base_s": st_base}
    emit(Line("replication", "wall time with a worker killed mid-run, vs stock Dask",
              ours=sw_kill, peer=st_kill, peer_name="Dask stock (same kill)", unit="s",
              better="lower", goal=1.0, extra=raw))  # fmt: skip
    emit(Line("replication", "slowdown a kill costs (killed / undisturbed), vs stock Dask",
              ours=sw_kill / sw_base, peer=st_kill / st_base, peer_name="Dask stock",
              unit="x", better="lower", goal=1.0, extra=raw))  # fmt: skip
    # recomputations: a count, so the line fails the moment one critical result is lost
    emit(Line("replication", "critical results recomputed after the kill, vs stock Dask",
              ours=sw_rec, peer=max(st_rec, 1), peer_name="Dask stock", unit="tasks",
              better="lower", goal=0.0, notes=f"stock recomputed {st_rec}"))  # fmt: skip
    return 0 if sw_rec == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
