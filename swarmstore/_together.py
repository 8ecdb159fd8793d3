"""``together``: run awaitables at once; when one fails, none is left running.

``asyncio.gather`` without ``return_exceptions`` raises the first error and leaves the
other awaitables running, unobserved: a request still in flight when the loop closes is
destroyed mid-way ("Task was destroyed but it is pending", an unclosed session, a
``PytestUnraisableExceptionWarning`` on a busy machine). :func:`together` is gather's
shape with a task group's rule: the first failure cancels the rest and waits for them,
then is raised as itself (not wrapped in an ``ExceptionGroup``), so callers keep their
``except`` clauses. Fan-outs whose members must all run to the end whatever happens
(a write to every replica) catch per member and keep ``gather``; this is for the others.

Members should be coroutines that start their own work when run: a wrapper that waits on
a semaphore before awaiting a coroutine made earlier leaves that coroutine never awaited
when it is cancelled in the wait (make the coroutine inside the wrapper instead).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["together"]


async def together[T](*aws: Awaitable[T]) -> list[T]:
    """The results of ``aws`` in order. If any raises, the others are cancelled and
    awaited, and the first error is raised as itself."""
    if not aws:
        return []
    if len(aws) == 1:
        return [await aws[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_coro(a)) for a in aws]
    except BaseExceptionGroup as errors:
        raise _first(errors) from None
    return [t.result() for t in tasks]


async def _coro[T](aw: Awaitable[T]) -> T:
    return await aw


def _first(errors: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of a task group, unwrapped from nested groups; its traceback kept."""
    first = errors.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
