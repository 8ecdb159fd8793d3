"""``swarmstore status --scheduler ADDRESS``: the swarmstore figures of a running cluster."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from swarmstore._cli import _output
from swarmstore._cli._exit import BAD_INPUT, OK, UNREACHABLE, CLIError

if TYPE_CHECKING:
    import argparse

__all__ = ["check_address", "cluster_status"]

_ADDRESS = re.compile(
    r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:.]+\]|[\w.-]+):\d{1,5}|inproc://\S+"
)


def check_address(address: str) -> str:
    """``address`` if it looks like a scheduler address (``tcp://host:port``), else refuse."""
    if not _ADDRESS.fullmatch(address):
        hint = " (that is the dashboard; give the scheduler's port)" if "http" in address else ""
        raise CLIError(
            f"--scheduler {address!r} is not a scheduler address: give one like "
            f"tcp://host:8786{hint}",
            BAD_INPUT,
        )
    return address


def _scheduler_figures(dask_scheduler: Any) -> list[dict[str, Any]]:
    """Runs on the scheduler: SwarmPlugin's placement, GPU and replication samples."""
    from swarmstore.metrics import scheduler_samples

    plugin = dask_scheduler.plugins.get("swarmstore")
    if plugin is None:
        return []
    return [
        {"name": s.name, "labels": dict(s.labels), "value": s.value}
        for s in scheduler_samples(plugin)
    ]


def _worker_figures(dask_worker: Any) -> dict[str, Any]:
    """Runs on each worker: its cache and router figures."""
    from swarmstore.metrics import worker_figures

    plugin = dask_worker.plugins.get("swarmstore-cache")
    return worker_figures(plugin) if plugin is not None else {}


def _connect(address: str) -> Any:
    import dask.config
    from distributed import Client

    timeout = dask.config.get("distributed.comm.timeouts.connect")  # honour the user's setting
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise CLIError(
            f"cannot reach the scheduler at {address} ({str(e).splitlines()[0][:200]}); "
            "is it running, and is that its address?",
            UNREACHABLE,
        ) from None


def cluster_status(args: argparse.Namespace) -> int:
    """Placements and replication on the scheduler, cache and router figures per worker."""
    address = check_address(args.scheduler)
    with _connect(address) as client:
        result = {
            "scheduler": client.run_on_scheduler(_scheduler_figures),
            "workers": client.run(_worker_figures),
        }
    if args.json:
        _output.print_json(result)
        return OK
    _output.table(
        "workers",
        ["worker", "RAM hits/misses", "disk hits/misses", "remote MiB", "router p99 ms"],
        [_worker_row(addr, figures) for addr, figures in result["workers"].items()],
    )
    sched = [
        [f["name"], ",".join(f"{k}={v}" for k, v in f["labels"].items()), f"{f['value']:g}"]
        for f in result["scheduler"]
    ]
    _output.table("scheduler (SwarmPlugin)", ["figure", "labels", "value"], sched)
    return OK


def _worker_row(addr: str, figures: dict[str, Any]) -> list[str]:
    cache = figures.get("cache", {})
    mem, disk, back = cache.get("memory", {}), cache.get("disk", {}), cache.get("backing", {})
    p99 = [
        src.get("quantiles", {}).get("0.99")
        for src in figures.get("router", {}).get("sources", {}).values()
    ]
    worst = max((q for q in p99 if q is not None), default=None)
    return [
        addr,
        f"{mem.get('hits', 0)}/{mem.get('misses', 0)}",
        f"{disk.get('hits', 0)}/{disk.get('misses', 0)}" if disk else "-",
        f"{back.get('bytes', 0) / 2**20:.1f}",
        "-" if worst is None else f"{worst * 1e3:.1f}",
    ]
