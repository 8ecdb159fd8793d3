"""What changed between two trees, reading only the pieces that differ.

Pieces are content-addressed and partition each node's keys, so a piece present (by
hash) in both trees holds the same entries in both: only the pieces on one side and not
the other are loaded and compared. Diffing two snapshots that share most of an array
reads a few pieces, whatever the array's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmstore._together import together
from swarmstore.checkpoint._manifest import is_metadata_key
from swarmstore.checkpoint._tree import _join

if TYPE_CHECKING:
    from collections.abc import Mapping

    from swarmstore.checkpoint._manifest import Entry
    from swarmstore.checkpoint._tree import Tree

__all__ = ["TreeDiff", "changed_text", "clashes", "diff_trees"]


@dataclass(frozen=True)
class TreeDiff:
    """Keys only in ``b`` (added), only in ``a`` (removed), in both with other entries."""

    added: dict[str, Entry]
    removed: dict[str, Entry]
    changed: dict[str, tuple[Entry, Entry]]

    @property
    def keys(self) -> set[str]:
        return set(self.added) | set(self.removed) | set(self.changed)


async def _side(tree: Tree, node: str, skip: set[str]) -> dict[str, Entry]:
    refs = [r for r in tree.nodes.get(node, ()) if r.hash not in skip]
    pieces = await together(*map(tree.loader.load, refs))
    return {_join(node, k): (d.hex(), s) for p in pieces for k, d, s in p.items()}


async def diff_trees(a: Tree, b: Tree) -> TreeDiff:
    """The difference from ``a`` to ``b``."""
    left: dict[str, Entry] = {}
    right: dict[str, Entry] = {}
    for key in a.inline.keys() | b.inline.keys():
        if a.inline.get(key) != b.inline.get(key):
            if key in a.inline:
                left[key] = a.inline[key]
            if key in b.inline:
                right[key] = b.inline[key]
    for node in a.nodes.keys() | b.nodes.keys():
        ha = {r.hash for r in a.nodes.get(node, ())}
        hb = {r.hash for r in b.nodes.get(node, ())}
        if ha == hb:
            continue
        shared = ha & hb
        left.update(await _side(a, node, shared))
        right.update(await _side(b, node, shared))
    return TreeDiff(
        added={k: e for k, e in right.items() if k not in left},
        removed={k: e for k, e in left.items() if k not in right},
        changed={k: (left[k], right[k]) for k in left.keys() & right.keys() if left[k] != right[k]},
    )


def _array_nodes(meta: Mapping[str, Any]) -> set[str]:
    """Nodes whose array definition (``zarr.json`` of an array, ``.zarray``) is in ``meta``."""
    nodes = set()
    for key, text in meta.items():
        name = key.rsplit("/", 1)[-1]
        node = key.rsplit("/", 1)[0] if "/" in key else ""
        if name == ".zarray" or (name == "zarr.json" and '"array"' in str(text)):
            nodes.add(node)
    return nodes


def clashes(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """Keys both sides changed, and keys one side changed in an array the other redefined."""
    found = set(ours) & set(theirs)
    for a, b in ((ours, theirs), (theirs, ours)):
        for node in _array_nodes({k: v for k, v in b.items() if is_metadata_key(k)}):
            start = f"{node}/" if node else ""
            found.update(k for k in a if k.startswith(start))
    return sorted(found)


def changed_text(diff: TreeDiff, key: str) -> Any:
    """What ``diff`` holds for ``key``, as one comparable value (text for metadata)."""
    for side in (diff.added, diff.removed):
        if key in side:
            return side[key]
    a, b = diff.changed[key]
    return json.dumps([a, b]) if not isinstance(a, str) else a + b
