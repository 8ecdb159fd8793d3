"""A drill for the demo: checkpoints over a replicated store survive the loss of R-1 nodes.

:func:`node_loss_drill` saves a few checkpoints of a changing array into ``store``, calls
``lose()`` (the caller takes nodes away: stops S3 servers, cuts proxies, deletes node
directories), then restores every step from what is left and checks it against what was
saved, every object against its xxh3-128. It knows nothing of the store's kind: any
store that keeps data through the loss passes, any other fails.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.sync import sync

from swarmstore.checkpoint._manager import CheckpointManager

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store

__all__ = ["DrillReport", "node_loss_drill"]


@dataclass(frozen=True)
class DrillReport:
    """What the drill saved, and what it read back after the loss."""

    steps: list[int]
    saved_bytes: int
    #: Objects read and checked against their hashes after the loss (all steps).
    verified_objects: int
    #: Every step restored to exactly the array saved.
    intact: bool
    save_seconds: float
    restore_seconds: float


def _state(step: int, shape: tuple[int, int], chunk: int) -> np.ndarray:
    x = np.arange(shape[0] * shape[1], dtype="f8").reshape(shape)
    x[: chunk * (step + 1), :chunk] = -step  # one more chunk row changes per step
    return x


def _check(mgr: CheckpointManager, steps: int, shape: tuple[int, int], chunk: int,
           say: Callable[[str], Any]) -> tuple[list[int], int, bool]:  # fmt: skip
    report = mgr.verify_report()
    found = mgr.steps()
    intact = report.ok and found == list(range(steps))
    for step in found if intact else []:
        ok = bool(np.array_equal(mgr.restore(step)["x"][:], _state(step, shape, chunk)))
        intact = intact and ok
        say(f"restored step {step}: {'intact' if ok else 'WRONG'}")
    return found, sum(report.checked.values()), intact


def _settle(store: Store) -> None:
    """Let the store finish writes it acknowledged early (a quorum write returns at W copies
    and hands the rest to the background): ``flush()``, when the store has one."""
    flush = getattr(store, "flush", None)
    if callable(flush):
        result = flush()
        if inspect.isawaitable(result):
            sync(result)


def node_loss_drill(
    store: Store,
    lose: Callable[[], Any],
    *,
    steps: int = 3,
    shape: tuple[int, int] = (256, 256),
    chunk: int = 32,
    progress: Callable[[str], Any] | None = None,
) -> DrillReport:
    """Save ``steps`` checkpoints into ``store``, call ``lose()``, restore and check them all.

    ``store`` is a fresh (empty) store, typically a ``ReplicatedStore`` with R replicas;
    ``lose`` takes R-1 of its nodes away; before that the store is flushed (if it has
    ``flush``), since a quorum write may return before its last copies are written.
    Raises nothing for lost data: the report says.
    """
    say = progress or (lambda _msg: None)
    mgr = CheckpointManager(store)
    t0 = time.perf_counter()
    saved = 0
    for step in range(steps):
        info = mgr.save({"x": _state(step, shape, chunk)}, encoding={"x": {"chunks": (chunk,) * 2}})
        saved += info.written_bytes
        say(f"saved step {info.step}: {info.written_objects} new objects")
    _settle(store)
    t1 = time.perf_counter()
    say("taking nodes away")
    lose()
    t2 = time.perf_counter()
    fresh = CheckpointManager(store)  # a new reader: nothing cached from before the loss
    try:
        found, checked, intact = _check(fresh, steps, shape, chunk, say)
    except OSError as e:  # nodes unreachable beyond what the store tolerates
        say(f"lost: {e}")
        found, checked, intact = [], 0, False
    return DrillReport(
        steps=found,
        saved_bytes=saved,
        verified_objects=checked,
        intact=intact,
        save_seconds=t1 - t0,
        restore_seconds=time.perf_counter() - t2,
    )
