"""What a task asks for: the ``swarm`` annotation, parsed and validated.

A graph says what its tasks need with ``dask.annotate(swarm={...})`` (or the standard
``resources=`` / ``priority=`` annotations, which keep working). This module turns the raw
annotation into a :class:`Requirements` value and refuses malformed ones with
:class:`~swarmstore.errors.PlacementError`, naming the key and the accepted values.

Validate on the client with :func:`annotate` (a drop-in for ``dask.annotate``): a typo then
fails at graph construction, where the user sees it. Graphs annotated with plain
``dask.annotate`` are validated again on the scheduler, and a task with a bad annotation
fails with the same message (scheduler plugin hooks cannot raise to the client).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
from dask.utils import parse_bytes

from swarmstore.errors import PlacementError

__all__ = [
    "KNOWN_KEYS",
    "MANAGED",
    "PRIORITY_NAMES",
    "Requirements",
    "annotate",
    "from_annotations",
    "managed_needs",
    "parse",
    "parse_graph",
]

#: Named priorities and the Dask user priority each maps to (larger runs first).
PRIORITY_NAMES: dict[str, int] = {"high": 10, "normal": 0, "low": -10}

#: Keys of the ``swarm`` annotation. ``persist`` belongs to durable results (issue 5) and is
#: passed through untouched in :attr:`Requirements.extra`.
KNOWN_KEYS: frozenset[str] = frozenset(
    {
        "gpu",
        "gpu_memory",
        "cpu",
        "priority",
        "critical",
        "replicas",
        "chunk",
        "gang",
        "gang_size",
        "persist",
    }
)

#: Dask resource names swarmstore declares on workers and restricts tasks with.
GPU, GPU_MEMORY, CPU = "GPU", "GPU_MEMORY", "CPU"

#: Resources swarmstore manages: only a request for these can be failed as unsatisfiable
MANAGED: frozenset[str] = frozenset({GPU, GPU_MEMORY})


def managed_needs(needs: Mapping[str, float] | None) -> dict[str, float]:
    """The part of a resource request that swarmstore manages (GPUs).

    >>> managed_needs({"GPU": 1, "X": 2})
    {'GPU': 1}
    """
    return {r: n for r, n in (needs or {}).items() if r in MANAGED}


@dataclass(frozen=True, slots=True)
class Requirements:
    """The parsed needs of one task.

    >>> r = parse({"gpu": 1, "gpu_memory": "8GiB", "priority": "high"})
    >>> r.is_gpu, r.resources(), r.priority
    (True, {'GPU': 1.0, 'GPU_MEMORY': 8589934592.0}, 10)
    """

    #: GPUs the task occupies while it runs (fractions share a GPU); 0 for a CPU task
    gpu: float = 0.0
    #: GPU memory the task needs, in bytes
    gpu_memory: int | None = None
    #: CPU cores (worker threads' worth of the ``CPU`` resource) the task occupies
    cpu: float | None = None
    #: Dask user priority (larger runs earlier); ``None`` keeps the graph's own
    priority: int | None = None
    #: Keep the result at ``replicas`` copies (issue 5's replication policy reads this)
    critical: bool = False
    replicas: int | None = None
    #: Chunk key: the task runs on the chunk's rendezvous-hash worker (cache affinity)
    chunk: str | None = None
    #: Gang name: the GPU tasks of one graph that share it start together, across
    #: workers, or none of them does (a placement group)
    gang: str | None = None
    #: Members of the gang, when they come in more than one submission (``client.submit``
    #: in a loop); without it, the gang is the tasks of that name in one graph submission
    gang_size: int | None = None
    #: Keys passed through for extensions (``persist``)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        """Whether the task needs a GPU worker."""
        return self.gpu > 0 or bool(self.gpu_memory)

    @property
    def persist(self) -> Any:
        """The ``persist`` value of the annotation (durable results), or ``None``."""
        return self.extra.get("persist")

    def resources(self) -> dict[str, float]:
        """The Dask resource restrictions these requirements amount to."""
        out: dict[str, float] = {}
        if self.gpu:
            out[GPU] = float(self.gpu)
        if self.gpu_memory:
            out[GPU_MEMORY] = float(self.gpu_memory)
        if self.cpu:
            out[CPU] = float(self.cpu)
        return out


def _number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlacementError(f"swarm annotation {name}={value!r} must be a number")
    if value < minimum:
        raise PlacementError(f"swarm annotation {name}={value!r} must be >= {minimum:g}")
    return float(value)


def _gpus(value: Any) -> float:
    """A share of one GPU (0 < gpu <= 1) or a whole number of GPUs on one worker (a gang)."""
    n = _number("gpu", value)
    if n > 1 and not n.is_integer():
        raise PlacementError(
            f"swarm annotation gpu={value!r}: a task uses a share of one GPU (0 < gpu <= 1) "
            "or a whole number of GPUs on one worker (2, 4, ...)"
        )
    return n


def _bytes(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            n = int(parse_bytes(value))
        except (ValueError, TypeError) as e:
            raise PlacementError(
                f"swarm annotation {name}={value!r} is not a byte size (say '8GiB' or 8e9)"
            ) from e
    else:
        n = int(_number(name, value))
    if n <= 0:
        raise PlacementError(f"swarm annotation {name}={value!r} must be a positive byte size")
    return n


def _gang(value: Any, gpu: float) -> str:
    if not isinstance(value, str) or not value:
        raise PlacementError(f"swarm annotation gang={value!r} must be a non-empty string")
    if not gpu:
        raise PlacementError(
            f"swarm annotation gang={value!r}: a gang's tasks each need GPUs (say gpu=1)"
        )
    return value


def _priority(value: Any) -> int:
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value.lower()]
        except KeyError:
            raise PlacementError(
                f"swarm annotation priority={value!r} must be an integer or one of "
                f"{sorted(PRIORITY_NAMES)}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlacementError(f"swarm annotation priority={value!r} must be an integer or a name")
    return value


def parse(value: Any) -> Requirements:
    """Validate one ``swarm`` annotation and return its :class:`Requirements`.

    Raises :class:`PlacementError` for an unknown key or a value of the wrong kind.

    >>> parse({"chunk": "x/c/0/0"}).chunk
    'x/c/0/0'
    >>> parse({"gpus": 1})
    Traceback (most recent call last):
    ...
    swarmstore.errors.PlacementError: unknown swarm annotation key 'gpus' (known: chunk, cpu, ...
    """
    if isinstance(value, Requirements):
        return value
    if not isinstance(value, Mapping):
        raise PlacementError(f"swarm annotation must be a dict, got {type(value).__name__}")
    unknown = sorted(set(value) - KNOWN_KEYS)
    if unknown:
        raise PlacementError(
            f"unknown swarm annotation key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    kw: dict[str, Any] = {}
    if value.get("gpu") is not None:
        kw["gpu"] = _gpus(value["gpu"])
    if value.get("gpu_memory") is not None:
        kw["gpu_memory"] = _bytes("gpu_memory", value["gpu_memory"])
    if value.get("cpu") is not None:
        kw["cpu"] = _number("cpu", value["cpu"]) or None
    if value.get("priority") is not None:
        kw["priority"] = _priority(value["priority"])
    if value.get("critical") is not None:
        if not isinstance(value["critical"], bool):
            raise PlacementError(f"swarm annotation critical={value['critical']!r} must be a bool")
        kw["critical"] = value["critical"]
    if value.get("replicas") is not None:
        n = value["replicas"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlacementError(f"swarm annotation replicas={n!r} must be an integer >= 1")
        kw["replicas"] = n
    if value.get("chunk") is not None:
        if not isinstance(value["chunk"], str) or not value["chunk"]:
            raise PlacementError(f"swarm annotation chunk={value['chunk']!r} must be a string")
        kw["chunk"] = value["chunk"]
    if kw.get("gpu_memory") and not kw.get("gpu"):
        kw["gpu"] = 1.0  # asking for GPU memory means asking for a GPU
    if value.get("gang") is not None:
        kw["gang"] = _gang(value["gang"], kw.get("gpu", 0.0))
    if value.get("gang_size") is not None:
        n = value["gang_size"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not kw.get("gang"):
            raise PlacementError(
                f"swarm annotation gang_size={n!r} must be an integer >= 1, with gang=name"
            )
        kw["gang_size"] = n
    extra = {k: value[k] for k in value if k == "persist"}
    return Requirements(**kw, extra=extra)


def from_annotations(annotations: Mapping[str, Any] | None) -> Requirements | None:
    """Requirements of a task from all its annotations, or ``None`` if it has none we use.

    The ``swarm`` annotation wins; the standard ``resources={"GPU": n, "GPU_MEMORY": b}`` is
    read too, so GPU tasks declared the stock way are balanced like the others.
    """
    if not annotations:
        return None
    swarm = annotations.get("swarm")
    resources = annotations.get("resources")
    if swarm is None and not (
        isinstance(resources, Mapping) and (GPU in resources or GPU_MEMORY in resources)
    ):
        return None
    req = parse(swarm if swarm is not None else {})
    if isinstance(resources, Mapping) and not req.is_gpu:
        gpu = resources.get(GPU)
        mem = resources.get(GPU_MEMORY)
        if gpu or mem:
            req = Requirements(
                gpu=float(gpu or 1.0),
                gpu_memory=int(mem) if mem else None,
                cpu=req.cpu,
                priority=req.priority,
                critical=req.critical,
                replicas=req.replicas,
                chunk=req.chunk,
                gang=req.gang,
                gang_size=req.gang_size,
                extra=req.extra,
            )
    return req


def parse_graph(
    swarm: Mapping[Any, Any], resources: Mapping[Any, Any]
) -> tuple[dict[Any, Requirements], dict[Any, str]]:
    """Requirements of a graph's tasks from its ``swarm`` and ``resources`` annotations.

    Returns ``(requirements, bad)``: ``bad`` maps each task with a malformed annotation to
    the message it fails with. Tasks asking for GPUs the stock way are included.

    >>> reqs, bad = parse_graph({"a": {"gpu": 1}, "b": {"gpus": 1}}, {"c": {"GPU": 1}})
    >>> sorted(reqs), list(bad)
    (['a', 'c'], ['b'])
    """
    reqs: dict[Any, Requirements] = {}
    bad: dict[Any, str] = {}
    for key, value in swarm.items():
        try:
            req = from_annotations({"swarm": value, "resources": resources.get(key)})
        except PlacementError as e:
            bad[key] = f"task {key!r}: {e}"
            continue
        if req is not None:
            reqs[key] = req
    for key, value in resources.items():
        if key in swarm or not (
            isinstance(value, Mapping) and (GPU in value or GPU_MEMORY in value)
        ):
            continue
        try:
            req = from_annotations({"resources": value})
        except PlacementError as e:
            bad[key] = f"task {key!r}: {e}"
            continue
        if req is not None:
            reqs[key] = req
    return reqs, bad


@contextmanager
def annotate(**requirements: Any) -> Iterator[Requirements]:
    """``dask.annotate(swarm=...)`` that validates on the client, where errors are seen.

    >>> import dask
    >>> with annotate(gpu=1, priority="high") as req:
    ...     req.gpu
    1.0
    """
    req = parse(requirements)
    with dask.annotate(swarm=dict(requirements)):
        yield req
