"""What the dispatcher handles: ready jobs and the work committed to workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmstore.compute.requirements import GPU, GPU_MEMORY

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping

__all__ = ["Committed", "Job", "is_gpu"]


@dataclass(slots=True)
class Job:
    """A held task that is ready to run."""

    key: Hashable
    #: Dask priority tuple (smaller runs first): (-user priority, generation, order, ...)
    rank: tuple[Any, ...]
    #: Resources it needs (GPU, GPU_MEMORY, ...); empty for a plain CPU task
    needs: Mapping[str, float] = field(default_factory=dict)
    #: The GPU task this CPU job feeds (throttled), if any
    consumer: Hashable | None = None
    #: The worker holding most of its inputs, if that is worth a preference
    home: str | None = None
    #: Expected duration in seconds (the task prefix's average)
    duration: float = 0.5
    #: The gang it belongs to (GPU jobs dispatched all at once or not at all), and its size
    gang: Hashable | None = None
    gang_size: int = 1
    #: whether ``duration`` was measured (its prefix ran before), not Dask's default guess
    known: bool = True

    @property
    def gpu(self) -> float:
        return float(self.needs.get(GPU, 0))

    @property
    def gpu_memory(self) -> float:
        return float(self.needs.get(GPU_MEMORY, 0))

    @property
    def priority(self) -> float:
        """The user priority (larger runs first)."""
        return -self.rank[0] if self.rank else 0.0


@dataclass(slots=True)
class Committed:
    """A job dispatched to ``worker`` and not finished."""

    worker: str
    gpu: float
    gpu_memory: float
    priority: float
    consumer: Hashable | None
    #: When it is expected to finish (dispatch time + its prefix's average duration)
    until: float = 0.0
    #: whether ``until`` rests on a measured duration
    known: bool = True


def is_gpu(job: Job) -> bool:
    return bool(job.gpu or job.gpu_memory)
