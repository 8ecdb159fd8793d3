"""Rebuilding the disk tier's index from the files: each value file describes itself.

A new or rebuilt index (``_diskindex``) starts from what is on disk: every file stored
under its own name, well formed and not covered by an invalidation since its fill gets a
row; anything else in ``data/`` (foreign, corrupt, stale, an old format) is deleted. Runs
on a caller's thread only, the directory lock held (the fill thread never rebuilds).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import swarmstore.cache._diskformat as fmt

if TYPE_CHECKING:
    from swarmstore.cache._diskgens import Gens

__all__ = ["scan"]

type Row = tuple[str, str, str, int]  # name, namespace, key, size


def scan(data: str, gens: Gens) -> list[Row]:
    """The index rows of the files under ``data``; deletes the files that get none."""
    rows: list[Row] = []
    for sub in os.scandir(data):
        if not sub.is_dir():
            continue
        try:
            files = list(os.scandir(sub.path))
        except FileNotFoundError:  # removed meanwhile
            continue
        for f in files:
            if f.name == "_gen":
                continue
            row = describe(f.path, f.name, gens)
            if row is None:
                with contextlib.suppress(OSError):
                    os.unlink(f.path)  # foreign, corrupt, stale or an old format
            else:
                rows.append(row)
    return rows


def describe(path: str, name: str, gens: Gens) -> Row | None:
    """``(name, ns, key, size)`` of a well-formed, current file stored under its own name."""
    try:
        with open(path, "rb") as f:
            raw = f.read(fmt.PREFIX.size)
            raw += f.read(fmt.prefix_length(raw) - len(raw))
            size = os.fstat(f.fileno()).st_size
        head = fmt.decode_header(raw, size)
    except (OSError, fmt.Corrupt):
        return None
    if fmt.key_stem(head.ns, head.key) + fmt.span_digest(head.span) != name:
        return None
    if gens.covered(head.ns, head.key, head.prefixes):
        return None
    return name, head.ns, head.key, size
