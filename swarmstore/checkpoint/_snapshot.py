"""Schema 2 documents: snapshots, and the small refs (branch versions, tags) that name them.

A **snapshot** (``snapshots/<id>.json``) is one committed state: its parent snapshot,
step, creation time, user metadata and message, the inline text of every zarr metadata
document, and per zarr node the references of the manifest pieces holding its chunk
keys (``_piece``). It is written before the commit and never changes.

A **ref** is what a commit creates: ``refs/branch.<name>/<version>.json`` for version
``n`` of a branch (one conditional create; the highest version is the tip) or
``refs/tag.<name>.json`` (created once, never moved). A ref is small: the snapshot id,
its step and parent, and a write id that tells a writer whose response was lost whether
the ref it reads back is its own.

Every document carries an xxh3-128 checksum of everything else and is parsed strictly
(``_json``); anything malformed raises :class:`ManifestError` and is never half-used.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import swarmstore.checkpoint._json as _json
from swarmstore.checkpoint._manifest import FORMAT, MAX_STEP, check_key, content_hash
from swarmstore.checkpoint._piece import PieceRef
from swarmstore.errors import InvalidKeyError, ManifestError, ManifestVersionError

__all__ = ["SCHEMA", "Ref", "Snapshot", "branch_prefix", "check_name", "ref_key", "tag_key"]

SCHEMA = 2
SNAPSHOTS, REFS, PIECES = "snapshots/", "refs/", "pieces/"
_ID = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_SNAPSHOT = 256 << 20
_MAX_REF = 64 << 10


def new_id() -> str:
    """A fresh snapshot or write id: 32 random hex digits."""
    return uuid.uuid4().hex


def check_name(name: object, what: str = "branch") -> str:
    """``name`` if it is a valid branch or tag name (letters, digits, ``._-``), else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{what} names are 1-128 letters, digits, '.', '_' or '-' (not starting with "
            f"'.', '_' or '-', no '..'), got {name!r}"
        )
    return name


def snapshot_key(sid: str) -> str:
    return f"{SNAPSHOTS}{sid}.json"


def piece_key(digest: str) -> str:
    return f"{PIECES}{digest[:2]}/{digest[2:]}"


def branch_prefix(branch: str) -> str:
    return f"{REFS}branch.{check_name(branch)}/"


def ref_key(branch: str, version: int) -> str:
    """Version ``version`` of ``branch``; 20 digits, so names sort by version."""
    return f"{branch_prefix(branch)}{version:020d}.json"


def tag_key(tag: str) -> str:
    return f"{REFS}tag.{check_name(tag, 'tag')}.json"


_VERSION = re.compile(r"(\d{20})\.json")


def version_of(key: str, branch: str) -> int | None:
    """The version a key under the branch's prefix names, or None for anything else."""
    m = _VERSION.fullmatch(key[len(branch_prefix(branch)) :])
    return int(m.group(1)) if m else None


def _seal(doc: dict[str, Any]) -> bytes:
    try:
        doc["checksum"] = content_hash(_json.dumps(doc))
        return _json.dumps(doc)
    except (TypeError, ValueError, RecursionError) as e:
        raise ManifestError(f"checkpoint metadata must be plain JSON: {e}") from e


def _open(data: bytes, where: str, kind: str, fields: frozenset[str], limit: int) -> dict:
    doc = _json.loads(data, where=where, max_bytes=limit)
    _require(isinstance(doc, dict) and doc.get("format") == FORMAT, where, "is not a checkpoint")
    version = doc.get("version")
    if _is_int(version) and version > SCHEMA:
        raise ManifestVersionError(
            f"{where} has schema version {version}; this swarmstore reads up to {SCHEMA}: "
            "upgrade swarmstore to read it"
        )
    _require(version == SCHEMA and doc.get("kind") == kind, where, f"is not a {kind}")
    _require(set(doc) == fields, where, f"has fields {sorted(doc)}, not {sorted(fields)}")
    checksum = doc.pop("checksum")
    _require(checksum == content_hash(_json.dumps(doc)), where, "fails its checksum")
    return doc


def _require(ok: object, where: str, problem: str) -> None:
    if not ok:
        raise ManifestError(f"{where} {problem}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step(value: object) -> bool:
    return _is_int(value) and 0 <= value <= MAX_STEP  # type: ignore[operator]


def _is_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Snapshot:
    """One committed state of the checkpoint store (see the module docstring)."""

    id: str
    parent: str | None
    step: int
    created: float
    metadata: dict[str, Any]
    inline: dict[str, str]
    nodes: dict[str, tuple[PieceRef, ...]]
    message: str = ""

    _FIELDS = frozenset(
        {
            "format",
            "version",
            "kind",
            "id",
            "parent",
            "step",
            "created",
            "metadata",
            "message",
            "inline",
            "nodes",
            "checksum",
        }
    )

    @property
    def nkeys(self) -> int:
        return len(self.inline) + sum(p.count for refs in self.nodes.values() for p in refs)

    @property
    def nbytes(self) -> int:
        """Stored bytes of the checkpoint: objects plus inline metadata text."""
        inline = sum(len(t.encode()) for t in self.inline.values())
        return inline + sum(p.nbytes for refs in self.nodes.values() for p in refs)

    def piece_refs(self) -> set[str]:
        return {p.hash for refs in self.nodes.values() for p in refs}

    def to_bytes(self) -> bytes:
        nodes = {
            n: [[p.hash, p.size, p.count, p.first, p.nbytes] for p in refs]
            for n, refs in self.nodes.items()
        }
        return _seal(
            {
                "format": FORMAT,
                "version": SCHEMA,
                "kind": "snapshot",
                "id": self.id,
                "parent": self.parent,
                "step": self.step,
                "created": self.created,
                "metadata": self.metadata,
                "message": self.message,
                "inline": self.inline,
                "nodes": nodes,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "snapshot") -> Snapshot:
        doc = _open(data, where, "snapshot", cls._FIELDS, _MAX_SNAPSHOT)
        _require(_is_id(doc["id"]), where, "has a bad id")
        _require(doc["parent"] is None or _is_id(doc["parent"]), where, "has a bad parent")
        _require(_is_step(doc["step"]), where, "has an invalid step")
        _require(_is_time(doc["created"]), where, "has a bad creation time")
        _require(isinstance(doc["metadata"], dict), where, "metadata is not an object")
        _require(isinstance(doc["message"], str), where, "message is not a string")
        inline, nodes = doc["inline"], doc["nodes"]
        _require(isinstance(inline, dict) and isinstance(nodes, dict), where, "has a bad tree")
        for key, text in inline.items():
            _require(isinstance(text, str), where, f"inline {key!r} is not text")
            _safe(key, where)
        return cls(
            doc["id"],
            doc["parent"],
            doc["step"],
            float(doc["created"]),
            doc["metadata"],
            inline,
            {n: _refs(n, r, where) for n, r in nodes.items()},
            doc["message"],
        )


def _safe(key: str, where: str) -> None:
    try:
        check_key(key)
    except InvalidKeyError as e:
        raise ManifestError(f"{where}: {e}") from e


def _refs(node: str, refs: object, where: str) -> tuple[PieceRef, ...]:
    if node:
        _safe(node, where)
    _require(isinstance(refs, list) and refs, where, f"node {node!r} has no pieces")
    out = []
    for ref in refs:  # type: ignore[union-attr]
        ok = isinstance(ref, list) and len(ref) == 5
        digest, size, count, first, nbytes = ref if ok else (None,) * 5
        ok = ok and isinstance(digest, str) and bool(_ID.fullmatch(digest))
        ok = ok and all(_is_int(v) and v >= 0 for v in (size, count, nbytes)) and count > 0
        _require(
            ok and isinstance(first, str), where, f"node {node!r} has a bad piece {ref!r:.200}"
        )
        out.append(PieceRef(digest, size, count, first, nbytes))
    firsts = [r.first for r in out]
    _require(firsts == sorted(set(firsts)), where, f"node {node!r} has pieces out of order")
    return tuple(out)


@dataclass(frozen=True)
class Ref:
    """A branch version or a tag: which snapshot, its step and parent, and the write id."""

    kind: str  # "branch" or "tag"
    name: str
    version: int
    snapshot: str
    step: int
    parent: str | None
    created: float
    write: str = field(default_factory=new_id)

    _FIELDS = frozenset(
        {
            "format",
            "version",
            "kind",
            "name",
            "ref_version",
            "snapshot",
            "step",
            "parent",
            "created",
            "write",
            "checksum",
        }
    )

    def to_bytes(self) -> bytes:
        return _seal(
            {
                "format": FORMAT,
                "version": SCHEMA,
                "kind": self.kind,
                "name": self.name,
                "ref_version": self.version,
                "snapshot": self.snapshot,
                "step": self.step,
                "parent": self.parent,
                "created": self.created,
                "write": self.write,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, kind: str, *, where: str = "ref") -> Ref:
        doc = _open(data, where, kind, cls._FIELDS, _MAX_REF)
        _require(isinstance(doc["name"], str) and _NAME.fullmatch(doc["name"]), where, "bad name")
        _require(_is_int(doc["ref_version"]) and doc["ref_version"] >= 0, where, "bad version")
        _require(_is_id(doc["snapshot"]) and _is_id(doc["write"]), where, "has a bad id")
        _require(doc["parent"] is None or _is_id(doc["parent"]), where, "has a bad parent")
        _require(_is_step(doc["step"]), where, "has an invalid step")
        _require(_is_time(doc["created"]), where, "has a bad creation time")
        return cls(
            kind,
            doc["name"],
            doc["ref_version"],
            doc["snapshot"],
            doc["step"],
            doc["parent"],
            float(doc["created"]),
            doc["write"],
        )
