"""The tasks SwarmPlugin holds: what each needs, which GPU task a feeder feeds, GPU work left.

Plain bookkeeping, kept in step with the scheduler by the plugin's hooks.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from swarmstore.compute.placement import gpu_consumers
from swarmstore.compute.requirements import GPU_MEMORY

if TYPE_CHECKING:
    from collections.abc import Collection, Hashable, Iterator, Mapping

    from swarmstore.compute.requirements import Requirements

__all__ = ["HeldTasks"]


class HeldTasks:
    """Held tasks (ours to dispatch) and the GPU work among them.

    >>> held = HeldTasks()
    >>> held.add("g", {"GPU": 0.5}, gpu=(10, 0.5))
    >>> held.add("f", {})
    >>> held.consumer_of["f"] = "g"
    >>> held.consumer("f"), held.top_priority, held.min_share
    ('g', 10, 0.5)
    >>> held.finish_gpu("g"), held.consumer("f") is None
    (True, True)
    """

    def __init__(self) -> None:
        #: key -> the resources it needs
        self.needs: dict[Hashable, dict[str, float]] = {}
        #: feeder key -> the GPU task it feeds first
        self.consumer_of: dict[Hashable, Hashable] = {}
        #: unfinished GPU tasks: key -> (user priority, share of a GPU)
        self.gpu: dict[Hashable, tuple[float, float]] = {}
        #: gang member -> (gang id, members): one gang per name per graph submission, or
        #: per name while its members live when they say how many they are (``gang_size``)
        self.gang_of: dict[Hashable, tuple[Hashable, int]] = {}
        self._priorities: Counter[tuple[float, float]] = Counter()  # (priority, GPU memory)
        self._shares: Counter[float] = Counter()
        self._graphs = 0

    def __contains__(self, key: object) -> bool:
        return key in self.needs

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self.needs))

    def __len__(self) -> int:
        return len(self.needs)

    def add(
        self, key: Hashable, needs: Mapping[str, float], gpu: tuple[float, float] | None = None
    ) -> None:
        """Hold ``key``; ``gpu`` (user priority, share) when it is a GPU task."""
        self.needs[key] = dict(needs)
        if gpu is not None and key not in self.gpu:
            self.gpu[key] = gpu
            self._priorities[gpu[0], float(needs.get(GPU_MEMORY, 0))] += 1
            self._shares[gpu[1]] += 1

    def add_gangs(self, reqs: Mapping[Hashable, Requirements]) -> None:
        """The gangs of one graph submission: the tasks whose requirements name one gang."""
        self._graphs += 1
        members: dict[str, list[Hashable]] = {}
        for key, req in reqs.items():
            if req.gang_size is not None:
                self.gang_of[key] = ((req.gang, None), req.gang_size)
            elif req.gang is not None:
                members.setdefault(req.gang, []).append(key)
        for name, keys in members.items():
            for key in keys:
                self.gang_of[key] = ((name, self._graphs), len(keys))

    def map_feeders(
        self, gpu_keys: list[Hashable], tasks: Mapping[Hashable, Any], waiting: Collection[str]
    ) -> list[Hashable]:
        """Map held tasks in state ``waiting`` that feed ``gpu_keys`` (scheduler ``tasks``) to
        the first of them they feed, in priority order; returns the feeders newly mapped."""

        def deps_of(key: Hashable) -> list[Any] | None:
            ts = tasks.get(key)
            if ts is None or ts.state not in waiting or key not in self.needs:
                return None
            return [d.key for d in ts.dependencies]

        gpu_keys.sort(key=lambda k: tasks[k].priority)
        new = []
        for key, consumer in gpu_consumers(gpu_keys, deps_of).items():
            if self.consumer_of.get(key) is None:
                self.consumer_of[key] = consumer
                new.append(key)
        return new

    def consumer(self, key: Hashable) -> Hashable | None:
        """The unfinished GPU task ``key`` feeds, if any."""
        c = self.consumer_of.get(key)
        return c if c in self.gpu else None

    def finish_gpu(self, key: Hashable) -> bool:
        """A GPU task finished (or will never run); returns whether it was one of ours."""
        entry = self.gpu.pop(key, None)
        if entry is None:
            return False
        mem = float(self.needs.get(key, {}).get(GPU_MEMORY, 0))
        pairs: tuple[tuple[Counter[Any], Any], ...] = (
            (self._priorities, (entry[0], mem)),
            (self._shares, entry[1]),
        )
        for counter, value in pairs:
            counter[value] -= 1
            if counter[value] <= 0:
                del counter[value]
        return True

    def forget(self, key: Hashable) -> bool:
        """Drop every trace of ``key``; returns whether it was an unfinished GPU task."""
        was_gpu = self.finish_gpu(key)  # first: it reads the task's needs
        self.needs.pop(key, None)
        self.consumer_of.pop(key, None)
        self.gang_of.pop(key, None)
        return was_gpu

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def top_priority(self) -> float:
        """Highest user priority of the unfinished GPU work."""
        return max((p for p, _ in self._priorities), default=0.0)

    def top_priority_within(self, memory_per_gpu: float) -> float:
        """Highest user priority of the unfinished GPU work a GPU of this memory can run.

        >>> held = HeldTasks()
        >>> held.add("train", {"GPU": 1, "GPU_MEMORY": 40e9}, gpu=(10, 1.0))
        >>> held.add("infer", {"GPU": 1, "GPU_MEMORY": 8e9}, gpu=(0, 1.0))
        >>> held.top_priority_within(80e9), held.top_priority_within(16e9)
        (10, 0)
        """
        fits = (p for p, mem in self._priorities if not memory_per_gpu or mem <= memory_per_gpu)
        return max(fits, default=0.0)

    @property
    def min_share(self) -> float:
        """Smallest share of a GPU the unfinished GPU work takes."""
        return min(self._shares, default=1.0)

    def figures(self) -> dict[str, Any]:
        return {"held": len(self.needs), "gpu": len(self.gpu)}
