"""How many CPU jobs each worker may take now: task slots, and the threads GPU work keeps.

Pure functions for :class:`~swarmstore.compute.dispatch.Dispatcher` (the policy is in its
module docstring and ``docs/compute.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from swarmstore.compute.placement import WorkerInfo

__all__ = ["ThreadPolicy", "free_cpu_slots", "slots", "starved_feeder_threads"]


@dataclass(frozen=True)
class ThreadPolicy:
    """What CPU work may use of the cluster's threads."""

    #: CPU jobs in flight per thread on CPU workers (Dask's ``worker-saturation``)
    saturation: float = 1.1
    #: GPU workers lend CPU work the threads beyond those their GPUs need, even while
    #: CPU-only workers take work (``swarmstore.compute.share-gpu-threads``)
    share_gpu_threads: bool = True


def slots(threads: int, saturation: float) -> int:
    """Task slots for ``threads`` threads (none for none): ``saturation`` per thread."""
    if threads <= 0:
        return 0
    if not math.isfinite(saturation):
        return 2 * threads
    return max(1, math.ceil(saturation * threads))


def gpu_threads(w: WorkerInfo, min_share: float) -> int:
    """Threads a GPU worker keeps for GPU tasks: as many as it can run at once."""
    share = min(max(min_share, 1e-3), 1.0)
    return min(w.nthreads, math.ceil(w.gpus / share - 1e-9))


def free_cpu_slots(
    running: Mapping[str, tuple[WorkerInfo, int]],
    gpu_tasks_on: Callable[[str], int],
    policy: ThreadPolicy,
    *,
    gpu_outstanding: bool,
    min_share: float,
) -> dict[str, int]:
    """Free CPU task slots per worker taking work, from ``(info, busy threads)``.

    CPU workers: ``saturation`` slots per thread. GPU workers while a CPU-only worker runs:
    none, or with ``share_gpu_threads`` their threads beyond :func:`gpu_threads` while GPU
    work is outstanding and every thread while none is, with no prefetch (a CPU task queued
    there could take a thread a GPU task needs). GPU workers alone: the same, but they keep
    at least one thread for CPU work (it may be what the GPU tasks wait for), and prefetch
    while no GPU work is outstanding.
    """
    cpu_only = any(not w.is_gpu for w, _ in running.values())
    out: dict[str, int] = {}
    for addr, (w, n) in running.items():
        if not w.is_gpu:
            out[addr] = slots(w.nthreads, policy.saturation) - n
            continue
        if cpu_only and not policy.share_gpu_threads:
            continue  # CPU work stays off GPU workers while a CPU worker can take it
        if not gpu_outstanding:  # no GPU work known: every thread (prefetch only alone)
            out[addr] = w.nthreads - n if cpu_only else slots(w.nthreads, policy.saturation) - n
            continue
        kept = gpu_threads(w, min_share)
        if not cpu_only:
            kept = min(kept, w.nthreads - 1)
        out[addr] = w.nthreads - max(kept, 0) - (n - gpu_tasks_on(addr))
    return out


def starved_feeder_threads(
    w: WorkerInfo, busy: int, gpu_tasks: int, policy: ThreadPolicy, *, gpu_ready: bool
) -> int:
    """Threads a GPU worker kept for GPU work that feeders of GPU work may use now.

    While no GPU job is ready anywhere and none is dispatched to this worker, its GPU waits
    for inputs: a GPU task can start no sooner than its feeders finish, so a kept thread
    that runs a feeder costs the GPU nothing and makes its next input sooner (CPU-bound
    pipelines on GPU workers with one thread each have no other thread to feed them). Other
    CPU work never gets these threads: it could hold one when the GPU task arrives.
    """
    if not (policy.share_gpu_threads and w.is_gpu) or gpu_ready or gpu_tasks:
        return 0
    return max(0, w.nthreads - busy)
