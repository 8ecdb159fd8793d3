"""The ``swarmstore`` command: demo, status, scrub, repair, rebalance, checkpoint.

Stores are described on the command line (``--node URL`` repeated, ``--replicas``) or in
a YAML file (``--config``) whose ``store:`` section holds the same fields; the rest of the
file is swarmstore configuration merged into dask.config. ``--json`` prints machine-
readable results; long work shows progress bars on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from zarr.core.sync import sync

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _store_from(args: argparse.Namespace) -> Any:
    import yaml

    from swarmstore import config
    from swarmstore.errors import ConfigError
    from swarmstore.storage import ReplicatedStore

    spec: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise CLIError(f"cannot read config file {args.config}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise CLIError(f"config file {args.config} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise CLIError(f"config file {args.config} must hold a mapping")
        spec = dict(raw.pop("store", None) or {})
        if raw:
            try:
                config.validate(raw if "swarmstore" in raw else {"swarmstore": raw})
            except ConfigError as e:
                raise CLIError(f"{args.config}: {e}") from e
            import dask.config

            dask.config.update(
                dask.config.config, raw if "swarmstore" in raw else {"swarmstore": raw}
            )
    nodes = args.node or spec.get("nodes")
    if not nodes:
        raise CLIError("no nodes: pass --node URL (repeatable) or a --config with store.nodes")
    try:
        return ReplicatedStore(
            nodes,
            replicas=args.replicas or spec.get("replicas"),
            write_quorum=spec.get("write_quorum"),
            state_dir=args.state_dir or spec.get("state_dir"),
            storage_options=spec.get("storage_options"),
        )
    except ConfigError as e:
        raise CLIError(str(e)) from e


def _emit(args: argparse.Namespace, title: str, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("field")
    table.add_column("value")
    for k, v in result.items():
        text = (
            f"{len(v)} ({', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
            if isinstance(v, list)
            else str(v)
        )
        table.add_row(k, text)
    Console().print(table)


def _with_progress(args: argparse.Namespace, label: str, run: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    async def go() -> Any:
        if args.json:
            return await run(None)
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=None)
            return await run(lambda done, total: bar.update(task, completed=done, total=total))

    return sync(go())


def _cmd_maintenance(args: argparse.Namespace) -> int:
    store = _store_from(args)
    op = args.command
    if op == "rebalance":
        report = _with_progress(args, op, lambda cb: store.rebalance(progress=cb, limit=args.limit))
    else:
        report = _with_progress(args, op, lambda cb: getattr(store, op)(progress=cb))
    _emit(args, f"swarmstore {op}", report.as_dict())
    if op == "scrub":
        return 0 if report.ok else 1
    if op == "repair":
        return 0 if not report.unrecoverable else 1
    return 0


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


def _cluster_status(args: argparse.Namespace) -> int:
    """Figures of a running cluster: placements and replication on the scheduler, cache
    and router figures on every worker."""
    from distributed import Client

    try:
        client = Client(args.scheduler, timeout="10s")
    except OSError as e:
        raise CLIError(f"cannot reach the scheduler at {args.scheduler}: {e}") from e
    with client:
        result = {
            "scheduler": client.run_on_scheduler(_scheduler_figures),
            "workers": client.run(_worker_figures),
        }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    rows = []
    for addr, figures in result["workers"].items():
        cache = figures.get("cache", {})
        mem, disk, back = cache.get("memory", {}), cache.get("disk", {}), cache.get("backing", {})
        p99 = [
            src.get("quantiles", {}).get("0.99")
            for src in figures.get("router", {}).get("sources", {}).values()
        ]
        worst = max((q for q in p99 if q is not None), default=None)
        rows.append(
            [
                addr,
                f"{mem.get('hits', 0)}/{mem.get('misses', 0)}",
                f"{disk.get('hits', 0)}/{disk.get('misses', 0)}" if disk else "-",
                f"{back.get('bytes', 0) / 2**20:.1f}",
                "-" if worst is None else f"{worst * 1e3:.1f}",
            ]
        )
    _table(
        "workers",
        ["worker", "RAM hits/misses", "disk hits/misses", "remote MiB", "router p99 ms"],
        rows,
    )
    sched = [
        [f["name"], ",".join(f"{k}={v}" for k, v in f["labels"].items()), f"{f['value']:g}"]
        for f in result["scheduler"]
    ]
    _table("scheduler (SwarmPlugin)", ["figure", "labels", "value"], sched)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if args.scheduler:
        return _cluster_status(args)
    store = _store_from(args)

    async def go() -> dict[str, Any]:
        from swarmstore.storage import inventory

        holders, unreachable = await inventory(store)
        per_node = {n.name: 0 for n in store.nodes}
        for nodes in holders.values():
            for n in nodes:
                per_node[n.name] += 1
        under = sum(
            1 for k, ns in holders.items() if len(set(store.targets(k)) & ns) < store.replicas
        )
        return {
            "nodes": [
                {
                    "name": n.name,
                    "zone": n.zone,
                    "keys": per_node[n.name],
                    "reachable": n.name not in unreachable,
                }
                for n in store.nodes
            ],
            "keys": len(holders),
            "replicas": store.replicas,
            "under_replicated_keys": under,
            "pending_hints": store.hints.count(),
            "router": _router_figures(store),
        }

    result = sync(go())
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"{result['keys']} keys, {result['replicas']} replicas, "
            f"{result['under_replicated_keys']} under-replicated, "
            f"{result['pending_hints']} hints pending"
        )
        for col in ("node", "zone", "keys", "reachable"):
            table.add_column(col)
        for n in result["nodes"]:
            table.add_row(
                n["name"], str(n["zone"]), str(n["keys"]), "yes" if n["reachable"] else "NO"
            )
        Console().print(table)
    return 0 if result["under_replicated_keys"] == 0 else 1


def _router_figures(store: Any) -> Any:
    router = store.router
    for attr in ("figures", "stats"):
        fn = getattr(router, attr, None)
        if callable(fn):
            return fn()
    return {}


def _checkpoint_store(args: argparse.Namespace) -> Any:
    """The store checkpoints live in: ``--store URL``, else the replicated store."""
    if args.store:
        return _plain_store(args.store, args)
    return _store_from(args)


def _plain_store(url: str, args: argparse.Namespace) -> Any:
    from swarmstore.dataset import resolve_store

    options = None
    if getattr(args, "storage_options", None):
        try:
            options = json.loads(args.storage_options)
        except ValueError as e:
            raise CLIError(f"--storage-options is not JSON: {e}") from e
    try:
        return resolve_store(url, storage_options=options)
    except (ValueError, ImportError) as e:
        raise CLIError(f"cannot open store {url!r}: {e}") from e


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    import dataclasses

    from swarmstore.checkpoint import CheckpointManager
    from swarmstore.errors import CheckpointNotFoundError

    mgr = CheckpointManager(_checkpoint_store(args))
    try:
        if args.action == "list":
            rows = [dataclasses.asdict(info) for info in mgr.list()]
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                _table(
                    f"{len(rows)} checkpoints",
                    ["step", "keys", "bytes", "metadata"],
                    [[r["step"], r["nkeys"], r["nbytes"], json.dumps(r["metadata"])] for r in rows],
                )
            return 0
        if args.action == "gc":
            _emit(args, "checkpoint gc", dataclasses.asdict(mgr.collect_garbage()))
            return 0
        if args.action == "verify":
            steps = [args.step] if args.step is not None else mgr.steps()
            checked = {str(step): mgr.verify_step(step) for step in steps}
            _emit(args, "checkpoint verify (objects checked)", checked)
            return 0
        if not args.to:
            raise CLIError(f"checkpoint {args.action} needs --to URL")
        dest = _plain_store(args.to, args)
        step = args.step if args.step is not None else _latest_step(mgr)
        if args.action == "archive":
            report = mgr.archive(step, to=dest)
            _emit(args, f"checkpoint archive {step}", dataclasses.asdict(report))
            return 0
        src = mgr.open_store(step)
        copied = _with_progress(args, "restore", lambda cb: _copy_all(src, dest, cb))
        _emit(args, f"checkpoint restore {step}", {"step": step, "keys": copied, "to": args.to})
        return 0
    except CheckpointNotFoundError as e:
        raise CLIError(str(e)) from e


def _latest_step(mgr: Any) -> int:
    latest = mgr.latest()
    if latest is None:
        raise CLIError("the store holds no checkpoint")
    return int(latest.step)


async def _copy_all(src: Any, dest: Any, progress: Any) -> int:
    """Copy every key of ``src`` into ``dest`` (a plain zarr copy of a checkpoint)."""
    from zarr.core.buffer import default_buffer_prototype

    keys = [k async for k in src.list()]
    for i, key in enumerate(keys):
        value = await src.get(key, default_buffer_prototype())
        if value is not None:
            await dest.set(key, value)
        if progress is not None:
            progress(i + 1, len(keys))
    return len(keys)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*map(str, row))
    Console().print(table)


def _cmd_demo(args: argparse.Namespace) -> int:
    from swarmstore._demo import run_demo

    return run_demo(workdir=args.workdir, keep=args.keep)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmstore", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every capability end to end on embedded defaults")
    demo.add_argument("--workdir", help="where to work (default: a temp dir, removed after)")
    demo.add_argument("--keep", action="store_true", help="keep the work dir")
    demo.set_defaults(func=_cmd_demo)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--node", action="append", metavar="URL", help="a node URL (repeat)")
        p.add_argument("--replicas", type=int, help="replicas per key")
        p.add_argument("--config", help="YAML file with a store: section and swarmstore config")
        p.add_argument("--state-dir", help="hints and rebalance journal directory")
        p.add_argument("--json", action="store_true", help="print JSON")

    for name, helptext in [
        ("status", "nodes, keys per node, replica health, hints, router figures"),
        ("scrub", "verify every replica of every key (exit 1 if anything is wrong)"),
        ("repair", "restore R verified copies of every key"),
        ("rebalance", "move keys where placement says after nodes joined or left"),
    ]:
        p = sub.add_parser(name, help=helptext)
        store_args(p)
        if name == "rebalance":
            p.add_argument("--limit", type=int, help="stop after N keys (resume by rerunning)")
        if name == "status":
            p.add_argument(
                "--scheduler", help="address of a running cluster: show its swarmstore figures"
            )
        p.set_defaults(func=_cmd_status if name == "status" else _cmd_maintenance)

    ckpt = sub.add_parser("checkpoint", help="list, restore, verify, gc or archive checkpoints")
    ckpt.add_argument("action", choices=["list", "restore", "verify", "gc", "archive"])
    ckpt.add_argument("--store", help="URL of the checkpoint store (else --node/--config)")
    ckpt.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    ckpt.add_argument("--to", help="destination store URL (restore, archive)")
    ckpt.add_argument("--storage-options", help="fsspec options for the URLs, as JSON")
    store_args(ckpt)
    ckpt.set_defaults(func=_cmd_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swarmstore`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"swarmstore: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
