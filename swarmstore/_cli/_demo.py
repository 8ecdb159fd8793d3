"""``swarmstore demo``: see :mod:`swarmstore._demo`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["demo"]


def demo(args: argparse.Namespace) -> int:
    from swarmstore._cli._exit import CLIError

    try:
        from swarmstore._demo import run_demo
    except ImportError as e:
        raise CLIError(
            f"the demo needs {e.name or 'an optional package'}: pip install 'swarmstore[demo]'"
        ) from None
    return run_demo(workdir=args.workdir, keep=args.keep)
