"""The argument parser of ``swarmstore``: standard library only, so ``--help`` is instant.

Each command names the function that runs it as ``"module:function"``; the module is
imported only when that command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, NoReturn

from swarmstore._cli._exit import BAD_INPUT, EXIT_CODES, CLIError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["build"]

_DESCRIPTION = "swarmstore: replicated Zarr storage, caches, placement and checkpoints on Dask."
_STORE_HELP = """\
A replicated store is described by --node URL (repeat: file:///abs/path, s3://bucket/prefix,
memory://name) with --replicas, or by --config FILE whose store: section holds nodes,
replicas, write_quorum, state_dir and storage_options (the rest of the file is swarmstore
configuration). A value given both on the command line and in the file must agree.
"""


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return f"exit status:\n{codes}\n\nAdd --debug to see the traceback of an error."


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2 (through CLIError)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')", BAD_INPUT)


def _common(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", action="append", metavar="URL", help="a node URL (repeat)")
    p.add_argument("--replicas", type=int, help="replicas per key (default: the config's)")
    p.add_argument("--config", metavar="FILE", help="YAML: a store: section and swarmstore config")
    p.add_argument("--state-dir", metavar="DIR", help="hints and rebalance journal directory")
    p.add_argument(
        "--storage-options", metavar="JSON", help="s3fs options for s3:// URLs, a JSON object"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def build(version: str) -> argparse.ArgumentParser:
    """The parser of every command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="swarmstore", description=_DESCRIPTION, epilog=_epilog(), formatter_class=fmt
    )
    parser.add_argument("--version", action="version", version=f"swarmstore {version}")
    _common(parser, top=True)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(name: str, helptext: str, run: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext, formatter_class=fmt, **kwargs)
        _common(p)
        p.set_defaults(run=run)
        return p

    demo = command("demo", "run every capability end to end on embedded defaults", "_demo:demo")
    demo.add_argument("--workdir", help="where to work (default: a temp dir, removed after)")
    demo.add_argument("--keep", action="store_true", help="keep the work dir")

    _maintenance_commands(command)
    _checkpoint_command(command)
    exp = command(
        "export",
        "copy every key (erasure-coded ones decoded) into a plain zarr store",
        "_export:export",
        epilog=_STORE_HELP,
    )
    exp.add_argument("--to", metavar="URL", required=True, help="the plain store to write")
    exp.add_argument("--prefix", default="", help="only keys under this prefix")
    exp.add_argument("--force", action="store_true", help="write into a store holding data")
    _store_args(exp)
    return parser


def _maintenance_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """status, scrub, repair, rebalance: each takes a store by its nodes or a config."""
    for name, helptext in [
        ("status", "nodes, keys per node, replica health, hints, router figures"),
        ("scrub", "verify every replica of every key (exit 1 if anything is wrong)"),
        ("repair", "restore R verified copies of every key (exit 1 if some could not be)"),
        ("rebalance", "move keys where placement says after nodes joined or left"),
    ]:
        p = command(name, helptext, f"_maintenance:{name}", epilog=_STORE_HELP)
        _store_args(p)
        if name == "rebalance":
            p.add_argument("--limit", type=int, help="stop after N keys (resume by rerunning)")
        if name == "status":
            p.add_argument(
                "--scheduler",
                metavar="ADDRESS",
                help="a running cluster (tcp://host:port): show its swarmstore figures",
            )


def _checkpoint_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    """checkpoint list/restore/verify/gc/archive."""
    ckpt = command(
        "checkpoint",
        "list, restore, verify, gc or archive checkpoints",
        "_checkpoint:checkpoint",
        epilog=_STORE_HELP,
    )
    ckpt.add_argument("action", choices=["list", "restore", "verify", "gc", "archive"])
    ckpt.add_argument("--store", metavar="URL", help="the checkpoint store (else --node/--config)")
    ckpt.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    ckpt.add_argument("--to", metavar="URL", help="destination store (restore, archive)")
    ckpt.add_argument(
        "--force", action="store_true", help="restore into a target that already holds data"
    )
    _store_args(ckpt)
