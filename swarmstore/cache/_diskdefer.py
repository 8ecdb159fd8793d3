"""Invalidations the disk tier runs later, in its fill thread, and the keys they cover.

Invalidations that arrive from other workers (``evict_later``) must not block the event
loop on the disk, so they queue here and the fill thread runs them; until one has run,
reads of the keys it covers miss (a pending invalidation is never served around).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Deferred"]

type Item = tuple[str, str, bool]  # namespace, key or prefix, is a prefix


class Deferred:
    """The queue of deferred invalidations, and a count of each one pending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Item] = []
        self._pending: dict[Item, int] = {}

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, ns: str, key: str, prefix: bool) -> None:
        """Queue one; reads of what it covers miss from now until it has run."""
        item = (ns, key, prefix)
        with self._lock:
            self._pending[item] = self._pending.get(item, 0) + 1
            self._queue.append(item)

    def covers(self, ns: str, key: str) -> bool:
        """Whether a queued (or running) invalidation covers ``key`` (cheap when none)."""
        if not self._pending:
            return False
        pending = list(self._pending)
        return any(
            p_ns == ns and (k == key or (pre and key.startswith(k))) for p_ns, k, pre in pending
        )

    def run(
        self, invalidate: Callable[[str, str, bool], None], warn: Callable[[str], None]
    ) -> None:
        """Run what is queued, each by ``invalidate``; a failure is warned of, then done."""
        with self._lock:
            todo, self._queue = self._queue, []
        for item in todo:
            try:
                invalidate(*item)
            except OSError as e:
                warn(f"disk cache could not drop {item[1]!r} ({e})")
            finally:
                with self._lock:
                    left = self._pending.pop(item, 1) - 1
                    if left > 0:
                        self._pending[item] = left
