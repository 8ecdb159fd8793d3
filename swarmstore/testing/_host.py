"""One test-bed host: who it is (:class:`HostInfo`), the process that serves its calls, and
the test's handle on it (:class:`Host`). :class:`~swarmstore.testing.hosts.HostBed` builds
hosts; this module knows nothing of nodes, proxies or Dask.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import json
import multiprocessing
import os
import threading
import traceback
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from swarmstore.testing._moto import s3_storage_options

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from multiprocessing.connection import Connection

    from swarmstore.testing.proxy import Proxy

__all__ = ["Host", "HostInfo", "RemoteError", "current_host"]

_ENV = "SWARMSTORE_TESTBED_HOST"
_ENV_LOCK = threading.Lock()  # os.environ is patched around each spawn


class RemoteError(RuntimeError):
    """A host raised an exception that could not be sent back as itself."""


@dataclass(frozen=True)
class HostInfo:
    """Who a host is; JSON in ``SWARMSTORE_TESTBED_HOST`` for it and its Dask processes."""

    index: int
    name: str
    root: str
    state_dir: str
    cache_dir: str
    clock_offset: float
    node_urls: tuple[str, ...]  #: node j as this host reaches it (its proxy to node j)
    node_names: tuple[str, ...]
    bucket: str

    def storage_options(self, node: int) -> dict[str, Any]:
        """s3fs options that reach ``node`` through this host's link."""
        return s3_storage_options(self.node_urls[node])

    def filesystem(self, node: int, asynchronous: bool = False, **kwargs: Any) -> Any:
        """A fresh s3fs filesystem on ``node`` through this host's link."""
        import s3fs

        options = {**self.storage_options(node), **kwargs}
        return s3fs.S3FileSystem(**options, asynchronous=asynchronous, skip_instance_cache=True)

    def env(self) -> dict[str, str]:
        """The environment variables that make a process this host."""
        return {
            _ENV: json.dumps(asdict(self)),
            "SWARMSTORE_CLOCK_OFFSET": repr(self.clock_offset),
            "DASK_SWARMSTORE__NETWORK__HOST": self.name,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def current_host() -> HostInfo:
    """The host this process belongs to; RuntimeError outside a :class:`HostBed` host."""
    raw = os.environ.get(_ENV)
    if not raw:
        raise RuntimeError(f"not inside a test bed host ({_ENV} is not set)")
    data = json.loads(raw)
    data["node_urls"] = tuple(data["node_urls"])
    data["node_names"] = tuple(data["node_names"])
    return HostInfo(**data)


# --- the host process ------------------------------------------------------------------------
def _host_main(conn: Connection) -> None:
    """Serve calls until the parent says stop or goes away; each call runs in a thread."""
    lock = threading.Lock()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="host-call")
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            break  # the parent is gone: never outlive it
        if msg == b"stop":
            break
        pool.submit(_serve_call, conn, lock, msg)
    pool.shutdown(wait=False, cancel_futures=True)
    os._exit(0)  # calls still hanging (a frozen link) must not keep the process alive


def _serve_call(conn: Connection, lock: threading.Lock, msg: bytes) -> None:
    call_id, fn, args, kwargs = cloudpickle.loads(msg)
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        reply = cloudpickle.dumps((call_id, True, result))
    except BaseException as e:
        reply = _error_reply(call_id, e)
    with lock, contextlib.suppress(OSError):
        conn.send_bytes(reply)


async def _await(aw: Any) -> Any:
    return await aw


def _error_reply(call_id: int, e: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(e))
    where = f"in test bed host {os.environ.get(_ENV, '?')[:60]}..."
    try:
        e.add_note(f"{where}\n{tb}")
        payload = cloudpickle.dumps((call_id, False, e))
        cloudpickle.loads(payload)
        return payload
    except Exception:
        return cloudpickle.dumps((call_id, False, RemoteError(f"{e!r}\n{where}\n{tb}")))


# --- the parent's side -------------------------------------------------------------------------
class Host:
    """The test's handle on one host process."""

    def __init__(self, info: HostInfo, links: Sequence[Proxy]) -> None:
        self.info = info
        self.links = list(links)  #: links[j]: this host's proxy to node j
        self._ids = itertools.count()
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._send_lock = threading.Lock()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._conn = parent
        self.process = ctx.Process(target=_host_main, args=(child,), name=info.name)
        with _ENV_LOCK:  # the child inherits os.environ as it is at start()
            env = info.env()
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                self.process.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child.close()
        self._reader = threading.Thread(target=self._read, name=f"{info.name}-replies", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"Host({self.info.name!r}, pid={self.process.pid})"

    @property
    def index(self) -> int:
        return self.info.index

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def link(self, node: int) -> Proxy:
        """This host's proxy to ``node``."""
        return self.links[node]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Start ``fn(*args, **kwargs)`` in the host; a ``concurrent.futures.Future``."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call_id = next(self._ids)
        payload = cloudpickle.dumps((call_id, fn, args, kwargs))
        self._pending[call_id] = fut
        try:
            with self._send_lock:
                self._conn.send_bytes(payload)
        except OSError as e:
            self._pending.pop(call_id, None)
            raise RuntimeError(f"{self.info.name} is not running") from e
        return fut

    def run(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float = 120.0, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the host; its result, or its exception raised here."""
        return self.submit(fn, *args, **kwargs).result(timeout)

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = cloudpickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            fut = self._pending.pop(call_id, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        for fut in self._pending.values():  # the host died or was stopped
            if not fut.done():
                fut.set_exception(RemoteError(f"{self.info.name} exited before answering"))
        self._pending.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the process (terminate, then kill) and join its reply thread."""
        with contextlib.suppress(OSError), self._send_lock:
            self._conn.send_bytes(b"stop")
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()
        self._reader.join(timeout)
        self.process.close()
