"""Notable swarmstore events, sent to the Dask scheduler's event log (``log_event``).

Everything goes to one topic, :data:`TOPIC` (``"swarmstore"``), as a dict whose ``action``
field says what happened (the convention SwarmPlugin's ``unsatisfiable-*`` events set
first). Read them with ``client.get_events("swarmstore")``, follow them live with
``client.subscribe_topic("swarmstore", handler)``, or see them in the dashboard's event
view. ``docs/metrics.md`` lists the actions and their fields.

:func:`emit` finds its way to the scheduler from wherever it runs:

1. the ``server`` it is given (scheduler-side code passes its scheduler);
2. the Dask worker running the current task (``distributed.get_worker()``);
3. the one worker of this process (storage code runs on zarr's I/O thread, where
   ``get_worker()`` does not work);
4. the scheduler of this process (``LocalCluster(processes=False)``, ``gen_cluster``);
5. the current client (``distributed.default_client()``);
6. nowhere: the event is only logged.

It never raises, never waits for an answer and does not import ``distributed`` when the
process has not (plain zarr use pays a dict lookup or two). Each event is also logged at
INFO on ``swarmstore._events``. A flood (every chunk of a lost node read-repaired, say) is
thinned per action to ``swarmstore.metrics.event-rate`` events per second per process; the
next event that goes through carries ``suppressed``, the number dropped before it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from swarmstore import config
from swarmstore.errors import ConfigError

__all__ = ["TOPIC", "emit", "plain"]

logger = logging.getLogger(__name__)

#: The ``log_event`` topic of every swarmstore event
TOPIC = "swarmstore"

_MAX_ITEMS = 100  # longest list (or dict) kept in an event; the rest is counted
_HOST = socket.gethostname()

_lock = threading.Lock()
_buckets: dict[str, list[float]] = {}  # action -> [tokens, last refill time]
_suppressed: dict[str, int] = {}  # action -> dropped since the last one that went through
#: Events let through in this process, per action
counts: dict[str, int] = {}
#: Events dropped by the rate limit in this process, per action
dropped: dict[str, int] = {}


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` made msgpack-safe: str keys, lists for tuples and sets, long lists cut.

    >>> plain({("x", 0): {1, 2}, "n": 3.5})
    {"('x', 0)": [1, 2], 'n': 3.5}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 4:
        return str(value)
    if isinstance(value, Mapping):
        out = {str(k): plain(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
        if len(value) > _MAX_ITEMS:
            out["..."] = len(value) - _MAX_ITEMS
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        out_list = [plain(v, depth + 1) for v in items[:_MAX_ITEMS]]
        if len(items) > _MAX_ITEMS:
            out_list.append(f"... {len(items) - _MAX_ITEMS} more")
        return out_list
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def emit(action: str, msg: Mapping[str, Any] | None = None, *, server: Any = None) -> bool:
    """Log ``{"action": action, **msg}`` under :data:`TOPIC` on the Dask scheduler.

    Parameters
    ----------
    action : str
        What happened (``"read-repair"``, ``"quorum-missed"`` ...).
    msg : mapping, optional
        Fields of the event; made msgpack-safe with :func:`plain`.
    server : Scheduler, Worker or Client, optional
        Send through this one instead of looking for one.

    Returns
    -------
    bool
        True when the event was handed to a scheduler, worker or client; False when it was
        only logged (no Dask here, events turned off, rate-limited) or sending failed.

    Examples
    --------
    >>> emit("example", {"key": ("x", 0)})  # no cluster here: logged only
    False
    """
    try:
        return _emit(action, msg, server)
    except ConfigError as e:  # a bad metrics.* setting: say so once, never break the caller
        _warn_config(e)
        return False
    except Exception:  # events are best effort: they must never break what reports them
        logger.debug("swarmstore event %s could not be sent", action, exc_info=True)
        return False


_warned: set[str] = set()


def _warn_config(error: ConfigError) -> None:
    text = str(error)
    with _lock:
        if text in _warned:
            return
        _warned.add(text)
    logger.warning("swarmstore events are off until this is fixed: %s", text)


def _emit(action: str, msg: Mapping[str, Any] | None, server: Any) -> bool:
    if not config.value("metrics.events"):
        return False
    suppressed = _admit(action)
    if suppressed is None:
        logger.debug("swarmstore event %s suppressed (rate limit)", action)
        return False
    event: dict[str, Any] = {"action": action, **plain(dict(msg or {}))}
    if suppressed:
        event["suppressed"] = suppressed
    target = server if server is not None else _find_target()
    worker_cls = _cls("distributed.worker", "Worker")
    if worker_cls is not None and isinstance(target, worker_cls):
        event.setdefault("worker", target.address)
    event.setdefault("host", _HOST)
    logger.info("swarmstore event %s: %s", action, event)
    if target is None:
        return False
    return _send(target, event)


def _admit(action: str) -> int | None:
    """Take a token of ``action``'s bucket: the count suppressed before it, or None."""
    rate = float(config.value("metrics.event-rate"))
    with _lock:
        if rate <= 0:
            counts[action] = counts.get(action, 0) + 1
            return _suppressed.pop(action, 0)
        now = time.monotonic()
        bucket = _buckets.setdefault(action, [rate, now])
        bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < 1:
            _suppressed[action] = _suppressed.get(action, 0) + 1
            dropped[action] = dropped.get(action, 0) + 1
            return None
        bucket[0] -= 1
        counts[action] = counts.get(action, 0) + 1
        return _suppressed.pop(action, 0)


def _cls(module: str, name: str) -> Any:
    """A class of an already imported module (never imports ``distributed`` itself)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _running(server: Any) -> bool:
    status = getattr(getattr(server, "status", None), "name", None)
    return status in ("running", "paused")


def _find_target() -> Any:
    worker_cls = _cls("distributed.worker", "Worker")
    if worker_cls is not None:
        try:
            return sys.modules["distributed.worker"].get_worker()
        except ValueError:
            pass
        workers = [w for w in list(worker_cls._instances) if _running(w)]  # type: ignore[attr-defined]
        if len(workers) == 1:
            return workers[0]
    else:
        workers = []
    scheduler_cls = _cls("distributed.scheduler", "Scheduler")
    if scheduler_cls is not None:
        for s in list(scheduler_cls._instances):  # type: ignore[attr-defined]
            if _running(s):
                return s
    if workers:
        return workers[0]
    client_mod = sys.modules.get("distributed.client")
    if client_mod is not None:
        try:
            client = client_mod.default_client()
        except ValueError:
            return None
        if client.status == "running":
            return client
    return None


def _on_loop(loop: Any) -> bool:
    try:
        return asyncio.get_running_loop() is loop.asyncio_loop
    except RuntimeError:
        return False


def _send(target: Any, event: dict[str, Any]) -> bool:
    scheduler_cls = _cls("distributed.scheduler", "Scheduler")
    worker_cls = _cls("distributed.worker", "Worker")
    if scheduler_cls is not None and isinstance(target, scheduler_cls):
        if _on_loop(target.loop):
            target.log_event(TOPIC, event)
        else:
            target.loop.add_callback(target.log_event, TOPIC, event)
        return True
    if worker_cls is not None and isinstance(target, worker_cls):
        target.log_event(TOPIC, event)  # thread-safe; a batched message, never awaited
        return True
    if hasattr(target, "scheduler") and hasattr(target, "loop"):  # a Client
        target.loop.add_callback(_client_send, target, event)
        return True
    target.log_event(TOPIC, event)  # any other object with log_event (a Nanny ...)
    return True


async def _client_send(client: Any, event: dict[str, Any]) -> None:
    try:
        await client.scheduler.log_event(topic=TOPIC, msg=event)
    except Exception as e:
        logger.debug("swarmstore event %s not delivered: %s", event.get("action"), e)


def _reset() -> None:
    """Forget rate-limit state and counts (tests)."""
    with _lock:
        _buckets.clear()
        _suppressed.clear()
        counts.clear()
        dropped.clear()
