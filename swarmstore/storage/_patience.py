"""How long a write, delete, create or maintenance step waits on one node that says nothing.

A frozen node (a SIGSTOPped host, a hung mount) neither answers nor resets: a request to
it waits for ever unless something bounds it. Reads have the router's deadlines; every
other step that waits on a single node goes through :func:`bounded`, which gives up after
``storage.node-timeout`` (60 s) and raises :class:`~swarmstore.errors.NodeUnavailable`,
so the node counts as down for that step (a repair reports it failed, a create moves on
to the next node). The request is cancelled; one that already reached the node may still
land, as a late commit the version protocol refuses or keeps.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from swarmstore.errors import NodeUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node

__all__ = ["bounded", "send"]


async def bounded[T](store: Coordinator, node: Node, step: Awaitable[T]) -> T:
    """``await step``, or :class:`NodeUnavailable` once ``storage.node-timeout`` passed."""
    try:
        return await asyncio.wait_for(step, store.node_timeout)
    except TimeoutError:
        raise NodeUnavailable(
            f"{node.name}: no answer within storage.node-timeout ({store.node_timeout:g} s)"
        ) from None


async def send[T](
    store: Coordinator, node: Node, attempt: Callable[[Node], Awaitable[T]], **kwargs: Any
) -> T:
    """``store.router.send`` to ``node``, :func:`bounded`."""
    return await bounded(store, node, store.router.send(node, attempt, name=_name, **kwargs))


def _name(node: Node) -> str:
    return node.name
