"""``swarmstore export``: copy a node set's keys, erasure-coded ones decoded, into a plain
zarr store (a local directory or an fsspec URL) that plain zarr reads.

A coded key is not readable from any single node (each holds one fragment); this is how to
hand such a dataset to tools that know nothing of swarmstore. Erasure coding comes from the
``--config`` file's ``storage.coding`` (``{"prefix/": "k+m"}``), as for every other command.
Exit status: 0 when every key under ``--prefix`` was copied, 1 when a key could not be read
(more than ``m`` fragments bad: run scrub, then repair), 2 for bad input (``--to`` missing
or already holding data), 3 when too few nodes answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore._cli import _output
from swarmstore._cli._checkpoint import _close_plain
from swarmstore._cli._exit import OK, CLIError
from swarmstore._cli._maintenance import opened
from swarmstore._cli._spec import plain_store

if TYPE_CHECKING:
    import argparse

__all__ = ["export"]


def export(args: argparse.Namespace) -> int:
    from swarmstore import _sync
    from swarmstore.storage import export as copy_keys

    with opened(args) as store:
        dest = plain_store(args.to, None, flag="--to", exists=False)
        try:
            if not args.force and _sync.run(_holds_data(dest)):
                raise CLIError(f"--to {args.to} already holds data; pass --force to add to it")
            copied = _sync.run(copy_keys(store, dest, prefix=args.prefix))
        finally:
            _close_plain(dest)
    _output.emit(args.json, "swarmstore export", {"to": args.to, "prefix": args.prefix,
                                                  "keys": copied})  # fmt: skip
    return OK


async def _holds_data(store: object) -> bool:
    async for _ in store.list():  # type: ignore[attr-defined]
        return True
    return False
