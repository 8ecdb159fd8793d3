"""Hints: notes that a node missed a write or a delete, so convergence is fast.

Correctness never depends on them (quorum reads and versioned repair give it); they make
the missed replicas catch up without a full scan. The durable copies live on the nodes
that acknowledged the write, in their metadata area (``.swarmstore/h/...``), so any host's
``replay_hints()`` or ``repair()`` finds them after the coordinator is gone. This module's
:class:`HintLog` is the coordinator's local cache of its own hints (a state directory),
which lets it replay them without listing any node.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    from swarmstore.storage._integrity import Version

__all__ = ["Hint", "HintLog", "hint_body", "hint_name", "parse_hint"]


def _h(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.encode())


@dataclass(frozen=True)
class Hint:
    """``node`` missed ``key`` at ``version``; ``holders`` hold the hint's durable copies."""

    node: str
    key: str
    version: Version | None = None
    holders: tuple[str, ...] = ()


def hint_name(node: str, key: str) -> str:
    """The metadata-area name of the hint "``node`` missed ``key``"."""
    return f"h/{_h(node)}-{xxhash.xxh3_128_hexdigest(key.encode())}"


def hint_body(hint: Hint) -> bytes:
    return json.dumps({"node": hint.node, "key": hint.key, "version": hint.version}).encode()


def parse_hint(body: bytes | None, holder: str) -> Hint | None:
    """A hint read from a node, or None for a torn or foreign file."""
    try:
        raw = json.loads(body or b"")
        node, key, version = raw["node"], raw["key"], raw.get("version")
        if not isinstance(node, str) or not isinstance(key, str):
            return None
        v = (int(version[0]), int(version[1])) if version is not None else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return Hint(node, key, v, (holder,))


class HintLog:
    """This coordinator's pending hints, ``{node: {key: Hint}}``, mirrored to ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self._pending: dict[str, dict[str, Hint]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._load()

    def __repr__(self) -> str:
        return f"HintLog({str(self.directory)!r}, {self.count()} pending)"

    def _load(self) -> None:
        if not self.directory.is_dir():
            return
        for path in self.directory.glob("*/*.json"):
            try:
                raw: dict[str, Any] = json.loads(path.read_text())
                version = raw.get("version")
                hint = Hint(
                    raw["node"],
                    raw["key"],
                    (int(version[0]), int(version[1])) if version is not None else None,
                    tuple(raw.get("holders", ())),
                )
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue  # a torn hint file: the scrub/repair pass covers what it meant
            self._remember(hint)

    def _remember(self, hint: Hint) -> None:
        self._pending.setdefault(hint.node, {})[hint.key] = hint
        self._by_key.setdefault(hint.key, set()).add(hint.node)

    def _path(self, node: str, key: str) -> pathlib.Path:
        return self.directory / _h(node) / f"{_h(key)}.json"

    def add(self, hint: Hint) -> None:
        """Remember ``hint`` (durably: a small file, written atomically)."""
        self._remember(hint)
        path = self._path(hint.node, hint.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
            body = {
                "node": hint.node,
                "key": hint.key,
                "version": hint.version,
                "holders": list(hint.holders),
            }
            tmp.write_text(json.dumps(body))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache: the durable copies are on the nodes

    def discard(self, node: str, key: str) -> None:
        """Forget a hint (replayed, or superseded by a write that reached the node)."""
        ops = self._pending.get(node)
        if not ops or key not in ops:
            return
        del ops[key]
        if not ops:
            del self._pending[node]
        nodes = self._by_key.get(key)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._by_key[key]
        self._path(node, key).unlink(missing_ok=True)

    def has(self, node: str, key: str) -> bool:
        ops = self._pending.get(node)
        return bool(ops) and key in ops

    def stale_nodes(self, key: str) -> set[str]:
        """Nodes this coordinator knows to be behind on ``key`` (read them last)."""
        if not self._by_key:
            return set()
        return self._by_key.get(key, set())

    def pending(self, node: str) -> dict[str, Hint]:
        return dict(self._pending.get(node, {}))

    def nodes(self) -> list[str]:
        return sorted(self._pending)

    def count(self) -> int:
        return sum(len(v) for v in self._pending.values())
