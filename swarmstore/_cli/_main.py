"""Parse, dispatch, and turn every outcome into one line and an exit status."""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
import traceback
from typing import TYPE_CHECKING

from swarmstore._cli._exit import INTERRUPTED, classify

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["run"]

INTERRUPTED_LINE = "swarmstore: interrupted; what was done stays done (rerun to finish)"


def _say(line: str) -> None:
    sys.stdout.flush()
    print(f"swarmstore: error: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _own_config() -> Iterator[None]:
    """dask.config as it was before the command, once it returns.

    ``--config FILE`` merges the file into dask.config for the command; called in-process
    (``swarmstore.cli.main``), that merge must not outlive it: a ``keep-last: 1`` left
    behind would make every later CheckpointManager in the process delete old steps.
    """
    loaded = sys.modules.get("dask.config")  # --help and --version never import dask
    saved = None if loaded is None else copy.deepcopy(loaded.config)
    try:
        yield
    finally:
        if saved is not None:
            loaded.config.clear()  # type: ignore[union-attr]
            loaded.config.update(saved)  # type: ignore[union-attr]
        elif (later := sys.modules.get("dask.config")) is not None:
            later.refresh()  # nothing but the command set anything: start from the sources


def run(argv: Sequence[str] | None = None) -> int:
    """Run one ``swarmstore`` command; returns its exit status (never raises but SystemExit)."""
    with _own_config():
        return _run(list(sys.argv[1:] if argv is None else argv))


def _run(argv: list[str]) -> int:
    from swarmstore import __version__
    from swarmstore._cli._parser import build

    debug = "--debug" in argv
    try:
        args = build(__version__).parse_args(argv)
        module, func = args.run.split(":")
        command = getattr(importlib.import_module(f"swarmstore._cli.{module}"), func)
        return int(command(args))
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
        return INTERRUPTED
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:
        code, line = classify(e)
        if debug:
            traceback.print_exc()
        _say(line)
        return code
