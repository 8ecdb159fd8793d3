"""The checkpoint manifest: what a committed checkpoint holds, as strict, checksummed JSON.

A manifest maps every logical zarr key of a checkpoint (``"x/zarr.json"``, ``"x/c/0/1"``)
to either the key's text inline (zarr metadata documents) or the xxh3-128 hash and size
of a content-addressed object stored at ``objects/<hash[:2]>/<hash[2:]>``. The manifest
is written last, in one conditional put, so a checkpoint exists exactly when its
manifest does.

Layout of a checkpoint store::

    manifests/00000000000000000007.json   one per committed step
    objects/3f/9c0e...                     chunk bytes, named by their xxh3-128
    inflight/<save id>.json                a save in progress (garbage collection waits)
    locks/gc.json                          held while garbage collection runs

Reading a manifest validates every field and its checksum before anything is used;
a malformed, tampered, or newer-schema manifest raises :class:`ManifestError` and is
never half-loaded.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

import swarmstore.checkpoint._json as _json
from swarmstore.errors import InvalidKeyError, ManifestError, ManifestVersionError

__all__ = [
    "FORMAT",
    "MAX_STEP",
    "SCHEMA_VERSION",
    "Entry",
    "Manifest",
    "check_key",
    "check_step",
    "content_hash",
    "is_metadata_key",
    "manifest_key",
    "object_key",
    "step_from_manifest_key",
]

FORMAT = "swarmstore-checkpoint"
SCHEMA_VERSION = 1
MANIFESTS = "manifests/"
OBJECTS = "objects/"
INFLIGHT = "inflight/"
GC_LOCK = "locks/gc.json"

#: An entry is the inline text of a metadata document, or ``(xxh3-128 hex, size)``.
type Entry = str | tuple[str, int]

_HASH = re.compile(r"[0-9a-f]{32}")
_ID = re.compile(r"[0-9a-f]{32}")
_MANIFEST_NAME = re.compile(r"manifests/(\d{20})\.json")
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
_FIELDS = frozenset(
    {"format", "version", "step", "id", "parent", "created", "metadata", "entries", "checksum"}
)
_MAX_KEY = 1024
#: The largest step a checkpoint may have (a signed 64-bit integer; its 19 digits fit the
#: 20-digit manifest names, so names always sort by step).
MAX_STEP = 2**63 - 1
#: Largest manifest read back (a schema-1 manifest of 1M chunks is about 90 MB).
MAX_MANIFEST_BYTES = 1 << 30


def content_hash(data: Any) -> str:
    """xxh3-128 of ``data`` (anything with the buffer protocol) as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def object_key(digest: str) -> str:
    """Where the object with this hash lives; ``digest`` must be a validated hash."""
    return f"{OBJECTS}{digest[:2]}/{digest[2:]}"


def check_step(step: object) -> int:
    """``step`` as an int if it is a valid step (0 to :data:`MAX_STEP`), else ``ValueError``.

    Booleans are refused (``True`` is not step 1), and so are floats, strings and
    anything past :data:`MAX_STEP`.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if not 0 <= int(step) <= MAX_STEP:
        raise ValueError(f"step must be a non-negative integer up to 2**63 - 1, got {step!r}")
    return int(step)


def manifest_key(step: int) -> str:
    """Where the manifest of ``step`` lives; zero-padded so names sort by step."""
    return f"{MANIFESTS}{check_step(step):020d}.json"


def step_from_manifest_key(key: str) -> int | None:
    """The step a manifest key names, or None for anything else under ``manifests/``."""
    m = _MANIFEST_NAME.fullmatch(key)
    return int(m.group(1)) if m else None


def is_metadata_key(key: str) -> bool:
    """Whether ``key`` names a zarr metadata document (kept inline in the manifest)."""
    return key.rsplit("/", 1)[-1] in _METADATA_NAMES


def check_key(key: object) -> str:
    """Return ``key`` if it is a safe relative store key, else raise :class:`InvalidKeyError`.

    Refused: empty keys, absolute keys, empty, ``.`` or ``..`` segments, backslashes and
    NUL characters, and keys longer than 1024 characters.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"store key must be a non-empty string, got {key!r}")
    if len(key) > _MAX_KEY or "\\" in key or "\x00" in key or "\n" in key:
        raise InvalidKeyError(f"store key {key[:80]!r} is too long or holds '\\', NUL or a newline")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKeyError(f"store key {key!r} has an empty, '.' or '..' segment")
    return key


def _canonical(doc: dict[str, Any]) -> bytes:
    return _json.dumps(doc)


@dataclass(frozen=True)
class Manifest:
    """One committed checkpoint: its step, lineage, user metadata and key → entry map.

    Parameters
    ----------
    step : int
        Non-negative step number; one manifest per step.
    entries : dict
        Logical zarr key → inline text (metadata) or ``(hash, size)`` (objects).
    metadata : dict
        User metadata (JSON): metrics, epoch, config. ``keep_best`` reads metrics here.
    parent : int or None
        The step this checkpoint was written on top of (its unchanged objects are shared).
    """

    step: int
    entries: dict[str, Entry]
    metadata: dict[str, Any] = field(default_factory=dict)
    parent: int | None = None
    created: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def hashes(self) -> set[str]:
        """Every object hash this manifest names."""
        return {e[0] for e in self.entries.values() if isinstance(e, tuple)}

    @property
    def nbytes(self) -> int:
        """Stored bytes of the checkpoint: objects plus inline metadata text."""
        return sum(e[1] if isinstance(e, tuple) else len(e.encode()) for e in self.entries.values())

    def _body(self) -> dict[str, Any]:
        entries = {
            k: {"hash": e[0], "size": e[1]} if isinstance(e, tuple) else {"inline": e}
            for k, e in self.entries.items()
        }
        return {
            "format": FORMAT,
            "version": SCHEMA_VERSION,
            "step": self.step,
            "id": self.id,
            "parent": self.parent,
            "created": self.created,
            "metadata": self.metadata,
            "entries": entries,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON with an xxh3-128 checksum over everything else."""
        try:
            body = self._body()
            body["checksum"] = content_hash(_canonical(body))
            return _canonical(body)
        except (TypeError, ValueError, RecursionError) as e:
            raise ManifestError(f"checkpoint metadata must be plain JSON: {e}") from e

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "manifest") -> Manifest:
        """Parse and fully validate; raise :class:`ManifestError` naming what is wrong."""
        doc = _json.loads(data, where=where, max_bytes=MAX_MANIFEST_BYTES)
        _require(isinstance(doc, dict), where, "is not a JSON object")
        _require(doc.get("format") == FORMAT, where, f"is not a {FORMAT} manifest")
        version = doc.get("version")
        _require(_is_int(version), where, "has no integer schema version")
        if version > SCHEMA_VERSION:
            raise ManifestVersionError(
                f"{where} has schema version {version}; this swarmstore reads up to "
                f"{SCHEMA_VERSION}: upgrade swarmstore to read it"
            )
        _require(version == SCHEMA_VERSION, where, f"has unknown schema version {version}")
        _require(set(doc) == _FIELDS, where, f"has fields {sorted(doc)}, not {sorted(_FIELDS)}")
        checksum = doc.pop("checksum")
        _require(
            isinstance(checksum, str) and checksum == content_hash(_canonical(doc)),
            where,
            "fails its checksum (truncated or tampered with); refusing to load it",
        )
        _require(_is_step(doc["step"]), where, "has an invalid step")
        parent = doc["parent"]
        _require(parent is None or _is_step(parent), where, "has a bad parent")
        _require(isinstance(doc["id"], str) and _ID.fullmatch(doc["id"]), where, "has a bad id")
        created = doc["created"]
        _require(_is_number(created), where, "has a bad creation time")
        _require(isinstance(doc["metadata"], dict), where, "metadata is not an object")
        _require(isinstance(doc["entries"], dict), where, "entries is not an object")
        entries = {k: _entry(k, v, where) for k, v in doc["entries"].items()}
        return cls(
            step=doc["step"],
            entries=entries,
            metadata=doc["metadata"],
            parent=parent,
            created=float(created),
            id=doc["id"],
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step(value: object) -> bool:
    return _is_int(value) and 0 <= value <= MAX_STEP


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(ok: object, where: str, problem: str) -> None:
    if not ok:
        raise ManifestError(f"{where} {problem}")


def _entry(key: str, value: object, where: str) -> Entry:
    try:
        check_key(key)
    except InvalidKeyError as e:
        raise ManifestError(f"{where}: {e}") from e
    if isinstance(value, dict) and set(value) == {"inline"} and isinstance(value["inline"], str):
        return value["inline"]
    if isinstance(value, dict) and set(value) == {"hash", "size"}:
        digest, size = value["hash"], value["size"]
        if isinstance(digest, str) and _HASH.fullmatch(digest) and _is_int(size) and size >= 0:
            return (digest, size)
    raise ManifestError(f"{where}: entry for {key!r} is malformed: {value!r:.200}")
