"""Parse, dispatch, and turn every outcome into one line and an exit status."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import TYPE_CHECKING

from swarmstore._cli._exit import INTERRUPTED, classify

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["run"]

INTERRUPTED_LINE = "swarmstore: interrupted; what was done stays done (rerun to finish)"


def _say(line: str) -> None:
    sys.stdout.flush()
    print(f"swarmstore: error: {line}", file=sys.stderr, flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run one ``swarmstore`` command; returns its exit status (never raises but SystemExit)."""
    from swarmstore import __version__
    from swarmstore._cli._parser import build

    argv = list(sys.argv[1:] if argv is None else argv)
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
