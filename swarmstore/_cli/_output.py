"""How the commands print: JSON on stdout, or rich tables; progress bars and notes on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["emit", "note", "print_json", "table", "with_progress"]


def print_json(result: Any) -> None:
    print(json.dumps(result, indent=2, default=str))


def note(text: str) -> None:
    """One line on stderr: what the operator should know beside the result."""
    print(f"swarmstore: {text}", file=sys.stderr)


def emit(as_json: bool, title: str, result: dict[str, Any]) -> None:
    """A result dict as JSON, or as a two-column table (lists shortened to 5 items)."""
    if as_json:
        print_json(result)
        return
    rows = []
    for k, v in result.items():
        text = (
            f"{len(v)} ({', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
            if isinstance(v, list)
            else str(v)
        )
        rows.append([k, text])
    table(title, ["field", "value"], rows)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*map(str, row))
    Console().print(out)


def with_progress(quiet: bool, label: str, run: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``run(progress)`` on the I/O loop with a progress bar on stderr (none if quiet)."""
    from swarmstore import _sync

    if quiet or not sys.stderr.isatty():
        return _sync.run(run(None))
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        return _sync.run(run(lambda done, total: bar.update(task, completed=done, total=total)))
