"""Keep task annotations through the scheduler's graph materialisation, for annotated graphs.

The scheduler materialises a submitted collection itself (``_materialize_graph`` runs
``expr.__dask_graph__()``), and dask.array's low-level optimiser then fuses linear chains,
flattening the graph to a dict and dropping every layer annotation (dask/dask#7036): the
``swarm`` and ``resources`` annotations of ``map_blocks`` and friends never reach placement.

:class:`AnnotationGuard` wraps *this* scheduler's ``update-graph`` stream handler. A graph
whose layers carry ``swarm`` or ``resources`` annotations and that dask.array optimises has
its optimiser swapped, in that graph only, for :func:`optimize_keeping_annotations` (the same
steps without linear fusion: blockwise fusion, which keeps annotations, still runs). Every
other graph, every client and every other scheduler in the process keep stock fusion; no
config value changes. An operator who set ``optimization.fuse.active`` explicitly on the
scheduler is obeyed.

The check is cheap for graphs without those annotations: a byte search of the pickled
graph for the two names; only a graph that contains them is unpickled (and, when changed,
pickled again) before the scheduler does its own work.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import dask.config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from distributed.scheduler import Scheduler

__all__ = ["KEPT", "AnnotationGuard", "keep_annotations", "optimize_keeping_annotations"]

logger = logging.getLogger(__name__)

#: Annotation types that must survive materialisation
KEPT = ("swarm", "resources")
_NEEDLE = re.compile(b"|".join(k.encode() for k in KEPT))


def optimize_keeping_annotations(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask.array's optimiser without linear fusion (and the slicing rewrite that follows it).

    ``optimize_blockwise`` and ``fuse_roots`` merge layers and their annotations; culling
    keeps only what ``keys`` need. The result stays a HighLevelGraph, so every layer keeps
    its annotations.
    """
    from dask.blockwise import fuse_roots, optimize_blockwise
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph

    if not isinstance(keys, list | set):
        keys = [keys]
    keys = list(flatten(keys))
    if not isinstance(dsk, HighLevelGraph):
        dsk = HighLevelGraph.from_collections(str(id(dsk)), dsk, dependencies=())
    dsk = optimize_blockwise(dsk, keys=keys)
    dsk = fuse_roots(dsk, keys=keys)
    return dsk.cull(set(keys))


def _carries_kept_annotations(hlg: Any) -> bool:
    layers = getattr(hlg, "layers", None) or {}
    return any(any(k in (layer.annotations or {}) for k in KEPT) for layer in layers.values())


def keep_annotations(expr: Any) -> int:
    """Swap dask.array's optimiser in every part of ``expr`` whose layers carry ``swarm`` or
    ``resources`` annotations; returns the number of parts changed (0: ``expr`` untouched).

    ``expr`` is the scheduler's own freshly unpickled copy: its operands are changed in place,
    before anything has been optimised or cached.
    """
    from dask._expr import Expr
    from dask.array.optimization import optimize

    changed = 0
    stack, seen = [expr], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        params = getattr(type(e), "_parameters", ())
        if "low_level_optimizer" in params and "dsk" in params:
            i = params.index("low_level_optimizer")
            if e.operands[i] is optimize and _carries_kept_annotations(e.hlg):
                e.operands[i] = optimize_keeping_annotations
                changed += 1
        stack.extend(op for op in e.operands if isinstance(op, Expr))
    return changed


def _may_carry(frames: Any) -> bool:
    return any(_NEEDLE.search(f) is not None for f in frames)


class AnnotationGuard:
    """Install :func:`keep_annotations` in front of one scheduler's graph materialisation.

    >>> guard = AnnotationGuard()
    >>> guard.installed
    False
    """

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self._original: Callable[..., Awaitable[None]] | None = None
        #: Graphs whose optimiser was swapped (for tests and figures)
        self.graphs_kept = 0

    @property
    def installed(self) -> bool:
        return self._original is not None

    def install(self, scheduler: Scheduler) -> None:
        """Wrap ``scheduler.stream_handlers["update-graph"]`` (idempotent)."""
        if self.installed:
            return
        if dask.config.get("optimization.fuse.active", None) is not None:
            logger.info(
                "swarmstore: optimization.fuse.active is set on the scheduler; annotated "
                "dask.array graphs are fused as configured"
            )
            return
        self.scheduler = scheduler
        self._original = scheduler.stream_handlers["update-graph"]
        scheduler.stream_handlers["update-graph"] = self.update_graph

    def uninstall(self) -> None:
        """Put the scheduler's own handler back."""
        if self.scheduler is not None and self._original is not None:
            if self.scheduler.stream_handlers.get("update-graph") == self.update_graph:
                self.scheduler.stream_handlers["update-graph"] = self._original
        self._original = None
        self.scheduler = None

    async def update_graph(self, **msg: Any) -> None:
        """The ``update-graph`` handler: rewrite annotated array graphs, then the stock one."""
        original = self._original
        assert original is not None
        ser = msg.get("expr_ser")
        if ser is not None and _may_carry(getattr(ser, "frames", ())):
            try:
                msg["expr_ser"] = self._rewrite(ser)
            except Exception:  # the scheduler reports a graph it cannot unpickle itself
                logger.debug("swarmstore: graph left as sent", exc_info=True)
        return await original(**msg)

    def _rewrite(self, ser: Any) -> Any:
        from distributed.protocol.serialize import (
            Serialized,
            deserialize,
            serialize,
            to_serialize,
        )

        expr = deserialize(ser.header, ser.frames)
        if not keep_annotations(expr):
            return ser
        self.graphs_kept += 1
        return Serialized(*serialize(to_serialize(expr), on_error="raise"))
