"""Hinted handoff: durable notes of writes a node missed, replayed when it is back.

Like Cassandra's hints, they live with the coordinator that took the write (a local
state directory), one small file per (node, key), written atomically. A node with a
hint for a key is never read for that key until the hint is replayed.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid

import xxhash

__all__ = ["HintLog"]


def _h(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.encode())


class HintLog:
    """Pending operations per node: ``{node: {key: op}}`` mirrored to ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self._pending: dict[str, dict[str, str]] = {}
        self._load()

    def __repr__(self) -> str:
        return f"HintLog({str(self.directory)!r}, {self.count()} pending)"

    def _load(self) -> None:
        if not self.directory.is_dir():
            return
        for path in self.directory.glob("*/*.json"):
            try:
                entry = json.loads(path.read_text())
                node, key, op = entry["node"], entry["key"], entry["op"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a torn hint file: the scrub/repair pass covers what it meant
            self._pending.setdefault(node, {})[key] = op

    def _path(self, node: str, key: str) -> pathlib.Path:
        return self.directory / _h(node) / f"{_h(key)}.json"

    def add(self, node: str, key: str, op: str) -> None:
        """Remember that ``node`` missed ``op`` ("set", "delete", "delete_dir") on ``key``."""
        self._pending.setdefault(node, {})[key] = op
        path = self._path(node, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"node": node, "key": key, "op": op}))
        os.replace(tmp, path)

    def discard(self, node: str, key: str) -> None:
        """Forget a hint (replayed, or superseded by a write that reached the node)."""
        ops = self._pending.get(node)
        if not ops or key not in ops:
            return
        del ops[key]
        if not ops:
            del self._pending[node]
        self._path(node, key).unlink(missing_ok=True)

    def has(self, node: str, key: str) -> bool:
        ops = self._pending.get(node)
        return bool(ops) and key in ops

    def blocks_read(self, node: str, key: str) -> bool:
        """Whether ``node`` may hold a stale copy of ``key`` (a missed write or delete)."""
        ops = self._pending.get(node)
        if not ops:
            return False
        if key in ops:
            return True
        return any(op != "set" and key.startswith(k) for k, op in ops.items())

    def pending(self, node: str) -> dict[str, str]:
        return dict(self._pending.get(node, {}))

    def nodes(self) -> list[str]:
        return sorted(self._pending)

    def count(self) -> int:
        return sum(len(v) for v in self._pending.values())
