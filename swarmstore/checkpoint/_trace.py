"""Named points of the commit and collection protocols, for tests that kill at each one.

The library calls :func:`point` between every two steps that touch the store. By default
it does nothing. A crash test installs an observer (:func:`observe`) in the process it
is about to kill, which reports each point (over a pipe) and may stop there, so the
kill lands exactly between two chosen steps instead of at a moment of the clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["observe", "point"]

_observer: Callable[[str], None] | None = None


def observe(fn: Callable[[str], None] | None) -> None:
    """Call ``fn(name)`` at every protocol point from now on (None: stop)."""
    global _observer
    _observer = fn


def point(name: str) -> None:
    """Protocol point ``name`` was reached (a no-op unless a test observes)."""
    if _observer is not None:
        _observer(name)
