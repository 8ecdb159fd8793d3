"""``swarmstore status|scrub|repair|rebalance``: a replicated store's health and upkeep.

Unreachable nodes are reported (stderr names them, JSON lists them) and the rest of the
work goes on; the exit status says what the operator must do next: 1 when damage was
found (corrupt, missing or stale replicas, keys repair could not restore), else 3 when a
node did not answer (its replicas were not checked), else 0.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from swarmstore._cli import _output
from swarmstore._cli._exit import DAMAGE, OK, UNREACHABLE, CLIError
from swarmstore._cli._spec import check_roots, replicated_store, store_spec

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["opened", "rebalance", "repair", "scrub", "status"]


@contextlib.contextmanager
def opened(args: argparse.Namespace) -> Iterator[Any]:
    """The replicated store ``args`` describe, closed (S3 sessions too) when done."""
    store = replicated_store(store_spec(args))
    interrupted = False
    try:
        check_roots(store)
        yield store
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # after Ctrl-C, leave promptly: background repairs on a hung node would hold the
        # exit for the whole 30 s (what was done stays done; a rerun finishes the rest)
        close(store, timeout=2.0 if interrupted else 30.0)


def close(store: Any, timeout: float = 30.0) -> None:
    """Finish background repairs and close node sessions on the loop that opened them."""
    from swarmstore import _sync

    with contextlib.suppress(Exception):
        _sync.run(store.aclose(), timeout=timeout, grace=1.0)


def _verdict(damage: bool, unreachable: list[str], done: str = "checked") -> int:
    if unreachable:
        shown = ", ".join(unreachable[:3]) + (", ..." if len(unreachable) > 3 else "")
        _output.note(
            f"warning: {len(unreachable)} node(s) unreachable ({shown}); their replicas were "
            f"not {done}: bring them back and rerun"
        )
    if damage:
        return DAMAGE
    return UNREACHABLE if unreachable else OK


def _run(args: argparse.Namespace, op: str, **kwargs: Any) -> Any:
    with opened(args) as store:
        method = getattr(store, op)
        report = _output.with_progress(args.json, op, lambda cb: method(progress=cb, **kwargs))
        return report


def scrub(args: argparse.Namespace) -> int:
    report = _run(args, "scrub")
    _output.emit(args.json, "swarmstore scrub", report.as_dict())
    damage = bool(report.corrupt or report.missing or report.stale)
    return _verdict(damage, list(report.unreachable))


def repair(args: argparse.Namespace) -> int:
    report = _run(args, "repair")
    _output.emit(args.json, "swarmstore repair", report.as_dict())
    failed = list(getattr(report, "unrecoverable", [])) + list(getattr(report, "failed", []))
    if failed:
        _output.note(f"{len(failed)} key(s) could not be restored to full replication")
    return _verdict(bool(failed), list(report.unreachable), "repaired")


def rebalance(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be a positive number of keys, got {args.limit}")
    report = _run(args, "rebalance", limit=args.limit)
    _output.emit(args.json, "swarmstore rebalance", report.as_dict())
    if not report.complete:
        _output.note(f"stopped after --limit {args.limit} keys; rerun to continue")
    return _verdict(False, list(report.unreachable), "moved")


async def _inventory(store: Any) -> tuple[dict[str, set[str]], dict[str, str]]:
    """``{key: names of nodes listing it}`` and ``{unreachable node: why}``."""
    import asyncio

    from swarmstore.errors import is_transport_error

    results = await asyncio.gather(
        *(n.list_prefix("") for n in store.nodes), return_exceptions=True
    )
    holders: dict[str, set[str]] = {}
    unreachable: dict[str, str] = {}
    for node, keys in zip(store.nodes, results, strict=True):
        if isinstance(keys, BaseException):
            if not is_transport_error(keys):
                raise keys
            unreachable[node.name] = f"{type(keys).__name__}: {keys}"
            continue
        for k in keys:
            holders.setdefault(k, set()).add(node.name)
    return holders, unreachable


def _status_of(store: Any) -> dict[str, Any]:
    from swarmstore import _sync

    holders, unreachable = _sync.run(_inventory(store))
    per_node = dict.fromkeys((n.name for n in store.nodes), 0)
    for names in holders.values():
        for name in names:
            per_node[name] += 1
    # A key is under-replicated when a reachable node that should hold it does not; what
    # an unreachable node holds is unknown, and reported as such.
    under = sum(
        1
        for k, names in holders.items()
        if any(t.name not in names and t.name not in unreachable for t in store.targets(k))
    )
    return {
        "nodes": [
            {
                "name": n.name,
                "zone": n.zone,
                "keys": per_node[n.name],
                "reachable": n.name not in unreachable,
                **({"error": unreachable[n.name]} if n.name in unreachable else {}),
            }
            for n in store.nodes
        ],
        "keys": len(holders),
        "replicas": store.replicas,
        "under_replicated_keys": under,
        "unreachable": sorted(unreachable),
        "pending_hints": store.hints.count(),
        "router": _router_figures(store),
    }


def _router_figures(store: Any) -> Any:
    router = store.router
    for attr in ("figures", "stats"):
        fn = getattr(router, attr, None)
        if callable(fn):
            return fn()
    return {}


def status(args: argparse.Namespace) -> int:
    if args.scheduler:
        from swarmstore._cli._cluster import cluster_status

        return cluster_status(args)
    with opened(args) as store:
        result = _status_of(store)
    if args.json:
        _output.print_json(result)
    else:
        _output.table(
            f"{result['keys']} keys, {result['replicas']} replicas, "
            f"{result['under_replicated_keys']} under-replicated, "
            f"{result['pending_hints']} hints pending",
            ["node", "zone", "keys", "reachable"],
            [
                [n["name"], n["zone"], n["keys"], "yes" if n["reachable"] else "NO"]
                for n in result["nodes"]
            ],
        )
    return _verdict(result["under_replicated_keys"] > 0, result["unreachable"])
