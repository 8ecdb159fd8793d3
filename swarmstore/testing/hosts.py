"""The multi-host test bed: N "hosts" as separate processes, M S3 nodes behind proxy links.

A Dask cluster is many hosts (DESIGN.md fact 14): a guarantee holds only if it holds for a
process with its own state dir, its own cache dir, a skewed clock and its own network path
to every node. :class:`HostBed` builds that on one machine:

- every S3 node is a moto server in its own process, with one bucket (``bed.bucket``);
- every host is a process (multiprocessing, spawn) with its own directories and clock
  offset (``SWARMSTORE_CLOCK_OFFSET``, read by :mod:`swarmstore._clock`);
- host ``i`` reaches node ``j`` only through its own :class:`~swarmstore.testing.proxy.Proxy`
  (``bed.link(i, j)``), so a test impairs "host 2 to node 1" alone;
- ``bed.host(i).run(fn, *args)`` runs a picklable function (cloudpickle: lambdas and
  closures too; a coroutine function is run with ``asyncio.run``) in host ``i`` and
  returns its result or raises its exception, with the remote traceback as a note;
  ``submit`` returns a future instead, so a test can watch a call that hangs;
- ``bed.scheduler(host=0)`` and ``bed.worker(host=i)`` start a Dask scheduler and workers
  as processes with that host's environment.

Inside a host (and in its Dask processes) :func:`current_host` says who it is: its index,
name, directories, clock offset and the node URLs as it sees them (its proxies).

Network namespaces (distinct addresses, kernel ``tbf``) are not used: the bed needs no
root, and every impairment is the proxy's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from swarmstore.testing._host import Host, HostInfo, RemoteError, current_host
from swarmstore.testing._moto import S3Endpoint, moto_server
from swarmstore.testing.proxy import Proxy, ProxyLoop

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Host", "HostBed", "HostInfo", "RemoteError", "current_host"]


@dataclass
class _DaskProcess:
    host: int
    role: str
    address: str | None
    popen: subprocess.Popen[bytes] = field(repr=False)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class HostBed:
    """N hosts and M S3 nodes on this machine, every host-to-node path its own proxy link.

    Parameters
    ----------
    root : path
        Where the hosts' directories go (``<root>/host<i>/state``, ``.../cache``).
    hosts, nodes : int
        How many of each.
    clock_offsets : sequence of float, optional
        Seconds each host's wall clock is off by; default all 0.
    seed : int
        Seeds the proxies' random impairments (link (i, j) gets ``seed + 100 * i + j``).

    Notes
    -----
    Use it as a context manager; :meth:`close` stops Dask processes, hosts, proxies and moto
    servers, in that order, and leaves nothing running. All proxies share one loop thread
    in this process.

    Examples
    --------
    >>> from swarmstore.testing.hosts import HostBed, current_host
    >>> with HostBed(tmp_path, hosts=2, nodes=1) as bed:  # doctest: +SKIP
    ...     bed.link(1, 0).freeze()  # host 1 can no longer reach node 0; host 0 can
    ...     bed.host(0).run(lambda: current_host().name)
    'host0'
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        hosts: int = 3,
        nodes: int = 3,
        clock_offsets: Sequence[float] | None = None,
        seed: int = 0,
        bucket: str = "swarm",
    ) -> None:
        if hosts < 1 or nodes < 1:
            raise ValueError(f"a test bed needs a host and a node at least, not {hosts}/{nodes}")
        offsets = list(clock_offsets) if clock_offsets is not None else [0.0] * hosts
        if len(offsets) != hosts:
            raise ValueError(f"{len(offsets)} clock offsets for {hosts} hosts")
        self.root = Path(root)
        self.bucket = bucket
        self._stack = contextlib.ExitStack()
        self._dask: list[_DaskProcess] = []
        self.hosts: list[Host] = []
        try:
            self.nodes: list[S3Endpoint] = self._start_nodes(nodes)
            self.proxies = self._stack.enter_context(ProxyLoop("swarmstore-testbed-proxies"))
            self._links = [
                [
                    self._stack.enter_context(
                        Proxy(
                            self.nodes[j].url,
                            loop=self.proxies,
                            name=f"host{i}->node{j}",
                            seed=seed + 100 * i + j,
                        )
                    )
                    for j in range(nodes)
                ]
                for i in range(hosts)
            ]
            for i in range(hosts):
                self.hosts.append(Host(self._info(i, offsets[i]), self._links[i]))
        except BaseException:
            self.close()
            raise

    def _start_nodes(self, n: int) -> list[S3Endpoint]:
        """Start the moto servers side by side (each takes seconds to import moto)."""
        servers = [moto_server(process=True) for _ in range(n)]
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futs = [pool.submit(cm.__enter__) for cm in servers]
            concurrent.futures.wait(futs)
        for cm, f in zip(servers, futs, strict=True):
            if f.exception() is None:
                self._stack.push(cm)  # its __exit__ stops the server
        endpoints = [f.result() for f in futs]  # raises the first failure
        for ep in endpoints:
            ep.make_bucket(self.bucket)
        return endpoints

    def _info(self, i: int, offset: float) -> HostInfo:
        base = self.root / f"host{i}"
        for sub in ("state", "cache"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        return HostInfo(
            index=i,
            name=f"host{i}",
            root=str(base),
            state_dir=str(base / "state"),
            cache_dir=str(base / "cache"),
            clock_offset=float(offset),
            node_urls=tuple(p.url for p in self._links[i]),
            node_names=tuple(f"node{j}" for j in range(len(self.nodes))),
            bucket=self.bucket,
        )

    def __enter__(self) -> HostBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HostBed(hosts={len(self.hosts)}, nodes={len(self.nodes)}, root={str(self.root)!r})"

    def host(self, i: int) -> Host:
        return self.hosts[i]

    def link(self, host: int, node: int) -> Proxy:
        """The proxy between ``host`` and ``node``: impair it to impair that path alone."""
        return self._links[host][node]

    def links_to(self, node: int) -> list[Proxy]:
        """Every host's link to ``node`` (impair all of them: the node itself is slow/dead)."""
        return [row[node] for row in self._links]

    # --- Dask ----------------------------------------------------------------------------------
    def _spawn(self, host: int, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.hosts[host].info.env()}
        # The same import path as this process, so test modules unpickle there too.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            cwd=self.hosts[host].info.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def scheduler(self, host: int = 0, timeout: float = 60.0) -> str:
        """Start a Dask scheduler as a process of ``host``; its address once it listens."""
        info = self.hosts[host].info
        path = Path(info.root) / f"scheduler-{len(self._dask)}.json"
        args = ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
        popen = self._spawn(host, [*args, "--no-dashboard", "--scheduler-file", str(path)])
        proc = _DaskProcess(host, "scheduler", None, popen)
        self._dask.append(proc)
        deadline = time.monotonic() + timeout
        while not path.exists() or not path.read_text().strip():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Dask scheduler on {info.name} did not start")
            time.sleep(0.05)
        proc.address = json.loads(path.read_text())["address"]
        return proc.address

    def worker(
        self, scheduler: str, host: int, *, name: str | None = None, nthreads: int = 1
    ) -> str:
        """Start a Dask worker (no nanny) as a process of ``host``; returns its name.

        Wait for it with ``client.wait_for_workers``.
        """
        info = self.hosts[host].info
        name = name or f"{info.name}-w{sum(p.role == 'worker' for p in self._dask)}"
        local = Path(info.root) / "dask" / name
        args = ["distributed.cli.dask_worker", scheduler, "--name", name, "--no-nanny"]
        args += ["--nthreads", str(nthreads), "--no-dashboard", "--local-directory", str(local)]
        args += ["--host", "127.0.0.1"]
        self._dask.append(_DaskProcess(host, "worker", None, self._spawn(host, args)))
        return name

    def dask_processes(self) -> list[subprocess.Popen[bytes]]:
        return [p.popen for p in self._dask]

    # --- teardown ----------------------------------------------------------------------------
    def stop_dask(self) -> None:
        """Stop the Dask workers, then their schedulers, started so far."""
        for proc in reversed(self._dask):  # workers before their scheduler
            _stop(proc.popen)
        self._dask.clear()

    def close(self) -> None:
        """Stop everything this bed started (idempotent)."""
        self.stop_dask()
        for h in self.hosts:
            h.close()
        self.hosts.clear()
        self._stack.close()  # proxies, their loop thread, then the moto servers


def _stop(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
