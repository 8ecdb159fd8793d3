"""Listing a session store without loading pieces it does not need.

A group listing (``list_dir("g")``, what ``Group.members()`` and xarray call) needs
only the inline metadata keys and the node paths; a node's pieces are loaded only when
the listing reaches inside that node (``list_dir("g/x/c")``) or asks for everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmstore.checkpoint._tree import _join

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from swarmstore.checkpoint._manifest import Entry
    from swarmstore.checkpoint._tree import Tree

__all__ = ["keys_under", "nodes_reaching"]


def nodes_reaching(nodes: Iterable[str], prefix: str, *, direct: bool) -> list[str]:
    """Nodes whose chunk keys may start with ``prefix`` (a "" or "/"-terminated prefix).

    With ``direct`` (a ``list_dir``), nodes strictly below the prefix are left out: their
    keys only add the node's own first path component, which the node path gives.
    """
    out = []
    for node in nodes:
        start = f"{node}/" if node else ""
        inside = prefix.startswith(start)  # the prefix reaches into this node
        below = node.startswith(prefix) and node != prefix.rstrip("/")
        if inside or (below and not direct):
            out.append(node)
    return out


async def keys_under(
    base: Tree,
    changes: Mapping[str, Entry | None],
    dropped: set[str],
    prefix: str,
    gone: Callable[[str], bool],
    *,
    direct: bool = False,
) -> list[str]:
    """Live keys starting with ``prefix``; with ``direct``, node paths stand in for nodes below.

    A node path below the prefix is returned as ``<node>/zarr.json``-like placeholder-free
    entry: the caller only takes the first path component after the prefix.
    """
    live_nodes = [n for n in base.nodes if n not in dropped]
    reach = nodes_reaching(live_nodes, prefix, direct=direct)
    keys = [k for k in base.inline if k.startswith(prefix)]
    for node in reach:
        keys.extend(_join(node, s) for s, _, _ in await base.node_items(node))
    if direct:
        keys.extend(f"{n}/" for n in live_nodes if n.startswith(prefix) and n not in reach)
    out = {k for k in keys if k.startswith(prefix) and not gone(k)}
    out.update(k for k, e in changes.items() if e is not None and k.startswith(prefix))
    return sorted(out)
