"""What a worker has: CPUs, memory and GPUs, detected and declared as Dask resources.

Dask-cuda declares no Dask resources for its GPUs, so a task annotated ``resources={"GPU": 1}``
finds no worker. :class:`InventoryPlugin` detects GPUs through NVML (the ``nvidia-ml-py``
bindings, imported as ``pynvml``), honouring ``CUDA_VISIBLE_DEVICES``, and declares

- ``GPU``: the number of visible GPUs,
- ``GPU_MEMORY``: their total memory in bytes,
- ``CPU``: the worker's threads,

unless the worker already declares a resource of that name (the operator's word wins). It
reports the whole :class:`Inventory` to the scheduler's metadata under
``("swarmstore", "inventory", <worker address>)``. With no NVML library, no driver or no GPU the
inventory is CPU-only and nothing fails.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

from swarmstore import config
from swarmstore.compute.requirements import CPU, GPU, GPU_MEMORY

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from distributed import Worker

__all__ = [
    "GPUInfo",
    "Inventory",
    "InventoryPlugin",
    "detect",
    "detect_gpus",
    "inventory_of",
    "visible_devices",
]

logger = logging.getLogger(__name__)

METADATA_KEY = ("swarmstore", "inventory")


@dataclass(frozen=True)
class GPUInfo:
    """One GPU as NVML reports it."""

    index: int
    name: str
    memory_total: int
    memory_free: int
    uuid: str = ""


@dataclass(frozen=True)
class Inventory:
    """A worker's hardware; ``gpu_status`` says why ``gpus`` is empty when it is."""

    cpus: int
    memory: int
    gpus: tuple[GPUInfo, ...] = ()
    gpu_status: str = "ok"
    nthreads: int | None = field(default=None)

    def resources(self) -> dict[str, float]:
        """Dask resources this hardware amounts to (no GPU entries on a CPU-only worker)."""
        out: dict[str, float] = {CPU: float(self.nthreads or self.cpus)}
        if self.gpus:
            out[GPU] = float(len(self.gpus))
            out[GPU_MEMORY] = float(sum(g.memory_total for g in self.gpus))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly form (what the scheduler's metadata holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Inventory:
        gpus = tuple(GPUInfo(**g) for g in d.get("gpus", ()))
        return cls(**{**d, "gpus": gpus})


def visible_devices(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The ``CUDA_VISIBLE_DEVICES`` tokens, or ``None`` when unset (all GPUs visible).

    CUDA stops at the first token it cannot resolve; ``""`` and ``-1`` hide every GPU.

    >>> visible_devices({"CUDA_VISIBLE_DEVICES": "1, 0"}), visible_devices({})
    (['1', '0'], None)
    >>> visible_devices({"CUDA_VISIBLE_DEVICES": "0,-1,1"})
    ['0']
    """
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    tokens: list[str] = []
    for tok in (t.strip() for t in raw.split(",")):
        if not tok or tok.startswith("-"):
            break
        tokens.append(tok)
    return tokens


def _select(gpus: Sequence[GPUInfo], tokens: list[str] | None) -> tuple[GPUInfo, ...]:
    if tokens is None:
        return tuple(gpus)
    picked: list[GPUInfo] = []
    for tok in tokens:
        if tok.isdigit():
            match = [g for g in gpus if g.index == int(tok)]
        else:  # "GPU-8f3c..." (a UUID or a unique prefix of one)
            match = [g for g in gpus if g.uuid and g.uuid.startswith(tok)]
        if len(match) != 1 or match[0] in picked:
            break  # CUDA ignores the rest after an invalid entry
        picked.append(match[0])
    return tuple(picked)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_gpus() -> tuple[list[GPUInfo], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"NVML unavailable: {e}"
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                GPUInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),
                    memory_total=int(mem.total),
                    memory_free=int(mem.free),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                )
            )
        return gpus, "ok" if gpus else "NVML reports no GPU"
    except Exception as e:
        return [], f"NVML query failed: {e}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # pragma: no cover - shutdown after a failed init
            logger.debug("nvmlShutdown failed", exc_info=True)


def detect_gpus(
    detector: Callable[[], Sequence[GPUInfo]] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[tuple[GPUInfo, ...], str]:
    """The GPUs this process may use and a status line.

    ``detector`` replaces NVML (a test seam: it returns every GPU of the machine, before
    ``CUDA_VISIBLE_DEVICES`` filtering). Never raises for a missing GPU or library.
    """
    if detector is None:
        found, status = _nvml_gpus()
    else:
        found, status = list(detector()), "ok (injected detector)"
    gpus = _select(found, visible_devices(env))
    if found and not gpus:
        status = "all GPUs hidden by CUDA_VISIBLE_DEVICES"
    return gpus, status


def _total_memory() -> int:
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def detect(
    *,
    detector: Callable[[], Sequence[GPUInfo]] | None = None,
    detect_gpus_: bool | None = None,
    nthreads: int | None = None,
    memory: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Inventory:
    """This machine's (or worker's) :class:`Inventory`.

    ``detect_gpus_`` defaults to ``swarmstore.compute.detect-gpus``.

    >>> inv = detect(detector=lambda: [GPUInfo(0, "Fake", 16 * 2**30, 16 * 2**30)], nthreads=2,
    ...              env={})
    >>> inv.resources()
    {'CPU': 2.0, 'GPU': 1.0, 'GPU_MEMORY': 17179869184.0}
    """
    want = config.value("compute.detect-gpus", detect_gpus_)
    if want:
        gpus, status = detect_gpus(detector, env)
    else:
        gpus, status = (), "GPU detection disabled (swarmstore.compute.detect-gpus)"
    return Inventory(
        cpus=os.cpu_count() or 1,
        memory=int(memory) if memory else _total_memory(),
        gpus=gpus,
        gpu_status=status,
        nthreads=nthreads,
    )


class InventoryPlugin(WorkerPlugin):
    """Detect a worker's hardware, declare it as Dask resources, report it to the scheduler.

    Parameters
    ----------
    detector : callable, optional
        Returns the machine's GPUs in place of NVML; a test seam, not for production use.

    Notes
    -----
    Install it before the worker registers (``plugins/worker.py`` does) and the resources are
    part of the registration; installed later (``client.register_plugin``) it updates them
    with ``Worker.set_resources``. Resources the worker already declares are left alone.

    Examples
    --------
    >>> InventoryPlugin().name
    'swarmstore-inventory'
    """

    name = "swarmstore-inventory"
    idempotent = True

    def __init__(self, detector: Callable[[], Sequence[GPUInfo]] | None = None) -> None:
        self.detector = detector
        self.inventory: Inventory | None = None

    async def setup(self, worker: Worker) -> None:
        inv = detect(
            detector=self.detector,
            nthreads=worker.state.nthreads,
            memory=worker.memory_manager.memory_limit,
        )
        self.inventory = inv
        declared = worker.state.total_resources
        new = {k: v for k, v in inv.resources().items() if k not in declared}
        logger.info(
            "swarmstore inventory: %d threads, %d GPU(s) (%s); declaring %s",
            worker.state.nthreads,
            len(inv.gpus),
            inv.gpu_status,
            new,
        )
        if new and worker.status in (Status.running, Status.paused):
            await worker.set_resources(**new)
        else:  # not registered yet: the registration carries them
            for k, v in new.items():
                declared[k] = v
                worker.state.available_resources[k] = v
        await worker.scheduler.set_metadata(
            keys=[*METADATA_KEY, worker.address], value=inv.to_dict()
        )


def inventory_of(scheduler: Any, address: str) -> Inventory | None:
    """The inventory a worker reported, read on the scheduler (``None`` if none arrived)."""
    try:
        d = scheduler.get_metadata(keys=[*METADATA_KEY, address])
    except KeyError:
        return None
    return Inventory.from_dict(d)
