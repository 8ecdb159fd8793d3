"""The ``swarmstore`` command: demo, status, scrub, repair, rebalance, checkpoint.

Stores are described on the command line (``--node URL`` repeated, ``--replicas``) or in
a YAML file (``--config``) whose ``store:`` section holds the same fields; the rest of the
file is swarmstore configuration merged into dask.config. ``--json`` prints machine-
readable results; long work shows progress bars on stderr. Every error is one line on
stderr and a documented exit status (:data:`swarmstore._cli._exit.EXIT_CODES`: 0 ok,
1 damage found, 2 bad input, 3 unreachable, 4 failed otherwise, 130 interrupted); add
``--debug`` for the traceback. The implementation lives in :mod:`swarmstore._cli` and is
imported lazily, so ``swarmstore --help`` imports neither dask nor zarr.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["console", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv`` without the program name); returns the exit status."""
    from swarmstore._cli._main import run

    return run(argv)


def console() -> NoReturn:
    """The console script: :func:`main`, then exit.

    After Ctrl-C the process leaves at once (``os._exit``) once the interrupted work has
    unwound, so threads and pending tasks cannot print shutdown noise after the one line.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while unwinding
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 130:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
