"""The shared context of one ``swarmstore demo`` run: where it works, what it checked.

Its own module so the demo's sections (:mod:`swarmstore._demo`,
:mod:`swarmstore._demo_cluster`) share it without importing each other.
Imports rich only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from rich.console import Console

__all__ = ["Check", "Demo", "close_session"]


def close_session(fs: Any) -> None:
    """Close an async s3fs filesystem's HTTP session on the loop that opened it (zarr's)."""
    from swarmstore import _sync

    client = getattr(fs, "_s3", None)
    if client is not None:
        _sync.run(client.close(), timeout=30)
        fs._s3 = None


@dataclass
class Check:
    section: str
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Demo:
    """Shared state of one demo run: where it works, what it checked, how to print."""

    root: Path
    console: Console
    s3: Any = None  # swarmstore.testing.S3Endpoint
    checks: list[Check] = field(default_factory=list)
    section: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(self.section, what, bool(ok), detail))
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"  {mark} {what}" + (f" [dim]({detail})[/dim]" if detail else ""))
        return bool(ok)

    def say(self, text: str) -> None:
        self.console.print(f"  {text}")

    @contextlib.contextmanager
    def progress(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar; yields a ``progress(done, total)`` callback."""
        columns = (TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total_: bar.update(task, completed=done, total=total_)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)
