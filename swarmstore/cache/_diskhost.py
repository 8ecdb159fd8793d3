"""What the disk tier's publisher needs of its engine, in a leaf module of its own.

The engine (``_diskengine``) owns a publisher (``_diskpublish``), and the publisher calls
back into the engine. Typing the publisher against :class:`Host` rather than the engine
class keeps the imports one way (engine -> publisher -> this module), so either can be
read, tested and changed without the other's module loaded. :class:`Gone`, the test
hooks and :class:`Notices` (how both report trouble) live here too.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import TYPE_CHECKING, Protocol

from swarmstore.errors import CacheWarning

if TYPE_CHECKING:
    import contextlib
    import pathlib
    import sqlite3
    from collections.abc import Callable

    from swarmstore.cache._diskevict import Space
    from swarmstore.cache._diskgens import Gens
    from swarmstore.cache._diskindex import Index
    from swarmstore.cache._disklocks import DirLock, Owner

__all__ = ["HOOKS", "O_DIR", "Gone", "Host", "Notices", "at"]

logger = logging.getLogger("swarmstore.cache._diskengine")

#: test hooks: a function run at a named point of publishing or invalidating (a kill)
HOOKS: dict[str, Callable[[], None]] = {}

#: flags to open a directory for ``dir_fd`` use (never inherited by child processes)
O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class Gone(OSError):
    """The cache directory was deleted or replaced under this process."""


def at(point: str) -> None:
    """Run the test hook registered for ``point``, if any."""
    hook = HOOKS.get(point)
    if hook is not None:
        hook()


class Notices:
    """Trouble reports of one disk tier: logged each time, a CacheWarning once per kind.

    A warning raised in the fill thread would reach nobody, so one noted there waits for
    a caller's next call (:meth:`raise_warnings`).
    """

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._later: list[str] = []

    def warn(self, message: str) -> None:
        """Log ``message``; the first time of its kind, a CacheWarning too, on a caller's
        thread (from the fill thread it waits for the next call: :meth:`raise_warnings`)."""
        logger.warning("%s", message)
        kind = message.split("(")[0]
        if kind in self._warned:
            return
        self._warned.add(kind)
        if threading.current_thread().name == "swarmstore-disk-fill":
            self._later.append(message)
        else:
            warnings.warn(message, CacheWarning, stacklevel=4)

    def raise_warnings(self) -> None:
        """Issue the CacheWarnings the fill thread noted (on this, a caller's, thread)."""
        while self._later:
            warnings.warn(self._later.pop(0), CacheWarning, stacklevel=4)


class Host(Protocol):
    """The engine as its publisher sees it (``_diskengine.Engine`` is the one there is)."""

    path: pathlib.Path
    fsync: bool
    state: str
    index_trouble: str | None
    index: Index
    gens: Gens
    space: Space | None
    lock: DirLock | None
    owner: Owner | None
    tmp_fd: int

    def ensure_open(self, *, foreground: bool) -> bool: ...

    def locked(
        self, after: list[Callable[[], None]] | None = None, *, foreground: bool
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def warn(self, message: str) -> None: ...
