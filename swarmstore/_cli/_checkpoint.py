"""``swarmstore checkpoint list|restore|verify|gc|archive``.

The checkpoint store is ``--store URL`` or the replicated store of ``--node``/``--config``
(never both). Damage is reported, never a crash: ``verify`` checks every step and exits 1
when one fails. ``restore --to`` refuses a target that already holds data unless
``--force``, and a failed restore leaves nothing behind in the target.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from swarmstore._cli import _output
from swarmstore._cli._exit import DAMAGE, OK, CLIError
from swarmstore._cli._spec import check_roots, plain_store, replicated_store, store_spec

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["checkpoint"]


def _close_plain(store: Any) -> None:
    """Close an fsspec store's HTTP session (s3fs) on the loop that opened it."""
    from swarmstore import _sync

    client = getattr(getattr(store, "fs", None), "_s3", None)
    if client is not None:
        with contextlib.suppress(Exception):
            _sync.run(client.close(), timeout=10)
        store.fs._s3 = None


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Any]:
    """The checkpoint store ``args`` name, closed when done."""
    from swarmstore._cli._maintenance import close

    spec = store_spec_cached(args)
    if args.store:
        if spec.nodes:
            raise CLIError(
                f"--store and the nodes of {spec.source} both name the checkpoint store; "
                "give one of them"
            )
        store = plain_store(args.store, _remote_options(args, spec), flag="--store", exists=True)
        try:
            yield store
        finally:
            _close_plain(store)
        return
    store = replicated_store(spec)
    try:
        check_roots(store)
        yield store
    finally:
        close(store)


def _remote_options(args: argparse.Namespace, spec: Any) -> dict[str, Any] | None:
    """``--storage-options`` for --store/--to; refused when neither is a remote URL."""
    if spec.storage_options is None:
        return None
    urls = [u for u in (args.store, args.to) if u]
    if not any("://" in u and not u.startswith("file://") for u in urls):
        raise CLIError("--storage-options applies to remote URLs, and --store/--to are local")
    return spec.storage_options


def checkpoint(args: argparse.Namespace) -> int:
    from swarmstore.checkpoint import CheckpointManager

    if args.step is not None and args.step < 0:
        raise CLIError(f"--step must be a step number >= 0, got {args.step}")
    if args.action in ("restore", "archive") and not args.to:
        raise CLIError(f"checkpoint {args.action} needs --to URL")
    with _opened(args) as store, CheckpointManager(store) as mgr:
        return _ACTIONS[args.action](args, mgr)


def _list(args: argparse.Namespace, mgr: Any) -> int:
    rows = [dataclasses.asdict(info) for info in mgr.list()]
    if args.json:
        _output.print_json(rows)
    else:
        _output.table(
            f"{len(rows)} checkpoints",
            ["step", "keys", "bytes", "metadata"],
            [[r["step"], r["nkeys"], r["nbytes"], r["metadata"]] for r in rows],
        )
    return OK


def _gc(args: argparse.Namespace, mgr: Any) -> int:
    _output.emit(args.json, "checkpoint gc", dataclasses.asdict(mgr.collect_garbage()))
    return OK


def _verify_rows(mgr: Any, steps: list[int]) -> dict[str, dict[str, Any]]:
    """Per step ``{"ok", "objects", "missing", "corrupt", "error"}``: damage is a result."""
    report = mgr.verify_report(steps)
    rows = {}
    for step in steps:
        missing, corrupt = report.missing.get(step, []), report.corrupt.get(step, [])
        error = report.unreadable.get(step)
        rows[str(step)] = {
            "ok": not (missing or corrupt or error),
            "objects": report.checked.get(step),
            "missing": missing,
            "corrupt": corrupt,
            "error": error,
        }
    return rows


def _verify(args: argparse.Namespace, mgr: Any) -> int:
    steps = mgr.steps()
    if args.step is not None:
        if args.step not in steps:
            raise CLIError(f"no checkpoint of step {args.step} (steps: {_shown(steps)})")
        steps = [args.step]
    checked = _verify_rows(mgr, steps)
    bad = [s for s, r in checked.items() if not r["ok"]]
    if args.json:
        _output.print_json(checked)
    else:
        _output.table(
            f"checkpoint verify: {len(steps) - len(bad)} of {len(steps)} steps intact",
            ["step", "ok", "objects", "missing", "corrupt", "error"],
            [
                [s, r["ok"], r["objects"], len(r["missing"]), len(r["corrupt"]), r["error"] or ""]
                for s, r in checked.items()
            ],
        )
    if bad:
        _output.note(f"damage found in step(s) {', '.join(bad)}; restore an intact step")
        return DAMAGE
    return OK


def _shown(steps: list[int]) -> str:
    if not steps:
        return "none"
    return ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")


def _step(args: argparse.Namespace, mgr: Any) -> int:
    if args.step is not None:
        return int(args.step)
    latest = mgr.latest()
    if latest is None:
        raise CLIError("the store holds no checkpoint")
    return int(latest.step)


def _archive(args: argparse.Namespace, mgr: Any) -> int:
    step = _step(args, mgr)
    dest = plain_store(
        args.to, _remote_options(args, store_spec_cached(args)), flag="--to", exists=False
    )
    try:
        report = mgr.archive(step, to=dest)
    finally:
        _close_plain(dest)
    _output.emit(args.json, f"checkpoint archive {step}", dataclasses.asdict(report))
    return OK


def _target(args: argparse.Namespace) -> Any:
    options = _remote_options(args, store_spec_cached(args))
    return plain_store(args.to, options, flag="--to", exists=False)


def store_spec_cached(args: argparse.Namespace) -> Any:
    spec = getattr(args, "_spec", None)
    if spec is None:
        spec = args._spec = store_spec(args)
    return spec


def _restore(args: argparse.Namespace, mgr: Any) -> int:
    """All or nothing (``CheckpointManager.restore_to``): every object is checked before
    anything is written, and a target that holds data needs ``--force``."""
    from swarmstore.errors import CheckpointExistsError

    step = _step(args, mgr)
    dest = _target(args)
    try:
        report = mgr.restore_to(dest, step, force=args.force)
    except CheckpointExistsError:
        raise CLIError(
            f"--to {args.to} already holds data; restore into an empty place, or add --force "
            "to replace what is there"
        ) from None
    finally:
        _close_plain(dest)
    _output.emit(args.json, f"checkpoint restore {step}", dataclasses.asdict(report))
    return OK


_ACTIONS = {"list": _list, "gc": _gc, "verify": _verify, "archive": _archive, "restore": _restore}
