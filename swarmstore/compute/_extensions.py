"""The extensions SwarmPlugin hosts: loading them and forwarding its hooks to them.

Other capabilities (replication of critical results, durable results, adaptive scaling) run
inside the same plugin, so they see the parsed requirements and one registration installs
everything.

- ``SwarmPlugin(extensions=None)`` loads :data:`DEFAULT_EXTENSIONS`; pass a sequence of
  ``"module:Class"`` names or classes to choose others (``()`` for none). A name whose module
  is not importable is skipped with a logged warning.
- In :meth:`SwarmPlugin.start` each extension is built as ``Ext(scheduler, plugin)``.
- SwarmPlugin forwards these hooks to each extension that defines them, after its own work,
  in load order; an exception in one extension is logged and does not stop the others:

  ``async start()``, ``async close()``,
  ``update_graph(scheduler, *, keys, annotations, **kwargs)`` (also ``client``, ``tasks``,
  ``priority``, ``stimulus_id``), ``transition(key, start, finish, *args, **kwargs)``,
  ``add_worker(scheduler, worker)``, ``remove_worker(scheduler, worker, **kwargs)``,
  ``valid_workers_downscaling(scheduler, workers) -> list`` (each extension may only narrow
  the list it is given; anything it adds is ignored).
- ``plugin.requirements[key]`` holds the parsed
  :class:`~swarmstore.compute.requirements.Requirements` of every live task with a ``swarm``
  (or GPU ``resources``) annotation, filled before extensions see ``update_graph`` and
  dropped when the task is forgotten; read ``critical``, ``replicas``, ``persist`` from it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Sequence

    from distributed.scheduler import Scheduler, WorkerState

__all__ = ["HOOKS", "Extensions", "load"]

logger = logging.getLogger("swarmstore.compute.plugin")

HOOKS = ("update_graph", "transition", "add_worker", "remove_worker", "valid_workers_downscaling")


def load(spec: str | type) -> type | None:
    """The class named ``"module:Class"`` (or ``spec`` itself); ``None`` if not importable."""
    if not isinstance(spec, str):
        return spec
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "Extension")
    except (ImportError, AttributeError) as e:
        logger.warning("swarmstore extension %s not loaded: %s", spec, e)
        return None


class Extensions:
    """Built extensions and, per hook, the bound methods that receive it."""

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self.hooks: dict[str, list[Any]] = {h: [] for h in HOOKS}

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.objects))

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        return f"Extensions({[type(e).__name__ for e in self.objects]})"

    async def start(self, specs: Sequence[str | type], scheduler: Scheduler, plugin: Any) -> None:
        """Build each extension as ``Ext(scheduler, plugin)`` and await its ``start()``."""
        for spec in specs:
            cls = load(spec)
            if cls is None:
                continue
            ext = cls(scheduler, plugin)
            self.objects.append(ext)
            for hook in HOOKS:
                fn = getattr(ext, hook, None)
                if callable(fn):
                    self.hooks[hook].append(fn)
        for ext in self.objects:
            if callable(getattr(ext, "start", None)):
                await ext.start()

    async def close(self) -> None:
        """Close every extension, last loaded first; forget them."""
        for ext in reversed(self.objects):
            if callable(getattr(ext, "close", None)):
                try:
                    await ext.close()
                except Exception:
                    logger.exception("swarmstore extension %r failed to close", ext)
        self.objects = []
        self.hooks = {h: [] for h in HOOKS}

    def call(self, hook: str, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Call ``hook`` on every extension; an awaitable if any of them returned one."""
        pending = []
        for fn in self.hooks[hook]:
            try:
                result = fn(*args, **kwargs)
            except Exception:
                logger.exception("swarmstore extension %s failed: %r", hook, fn)
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        return _gather(pending) if pending else None

    def call_sync(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call a hook that returns nothing (``transition``: no awaitable check, per call)."""
        for fn in self.hooks[hook]:
            try:
                fn(*args, **kwargs)
            except Exception:
                logger.exception("swarmstore extension %s failed: %r", hook, fn)

    def narrow(self, scheduler: Scheduler, workers: list[WorkerState]) -> list[WorkerState]:
        """``valid_workers_downscaling``: each extension may only narrow the list."""
        for fn in self.hooks["valid_workers_downscaling"]:
            try:
                allowed = set(fn(scheduler, list(workers)))
            except Exception:
                logger.exception("swarmstore extension valid_workers_downscaling failed: %r", fn)
                continue
            workers = [w for w in workers if w in allowed]
        return workers


async def _gather(pending: list[Awaitable[Any]]) -> None:
    for r in await asyncio.gather(*pending, return_exceptions=True):
        if isinstance(r, Exception):
            logger.error("swarmstore extension hook failed: %r", r)
