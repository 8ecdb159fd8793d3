"""The plain records the checkpoint API returns: checkpoints, diffs, and operator reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmstore.checkpoint._gc import GCReport
    from swarmstore.checkpoint._snapshot import Snapshot

__all__ = ["ArchiveReport", "CheckpointDiff", "CheckpointInfo", "RestoreReport", "VerifyReport"]


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint; the ``written_*``/``reused_*`` figures are set by ``save``."""

    step: int
    id: str
    created: float
    metadata: dict[str, Any]
    #: The step of the snapshot this one was written on top of (None for the first).
    parent: int | None
    nbytes: int
    nkeys: int
    written_objects: int = 0
    written_bytes: int = 0
    reused_objects: int = 0
    gc: GCReport | None = None
    #: The parent snapshot's id, the branch, and the commit message.
    parent_id: str | None = None
    branch: str = "main"
    message: str = ""
    #: Bytes of manifest pieces and of the snapshot document this commit wrote.
    manifest_bytes: int = 0

    @classmethod
    def of(cls, snap: Snapshot, *, parent: int | None, branch: str, **extra: Any) -> CheckpointInfo:
        return cls(
            snap.step,
            snap.id,
            snap.created,
            snap.metadata,
            parent,
            snap.nbytes,
            snap.nkeys,
            parent_id=snap.parent,
            branch=branch,
            message=snap.message,
            **extra,
        )


@dataclass(frozen=True)
class CheckpointDiff:
    """Keys added, removed and changed from checkpoint ``a`` to ``b``."""

    a: int
    b: int
    added: list[str]
    removed: list[str]
    changed: list[str]
    #: Bytes of objects ``b`` names that ``a`` does not (what an incremental save wrote).
    new_bytes: int
    #: Paths of the zarr nodes (arrays, groups) holding any of those keys.
    nodes: list[str]


@dataclass(frozen=True)
class ArchiveReport:
    """What ``archive`` copied of the chunk objects: objects written, their bytes, objects
    already there (intact, when checked), and of those written, bad copies written again."""

    step: int
    copied_objects: int
    copied_bytes: int
    skipped_objects: int
    repaired_objects: int = 0


@dataclass
class VerifyReport:
    """Damage found by ``verify``: per step, what is missing or fails its hash.

    ``ok`` is True when every checked step is intact. Nothing raises for damage: a
    report is what an operator (or ``swarmstore checkpoint verify``) gets back.
    """

    checked: dict[int, int] = field(default_factory=dict)
    #: step -> object hashes (or piece / snapshot names) that are absent
    missing: dict[int, list[str]] = field(default_factory=dict)
    #: step -> object hashes whose bytes fail their xxh3-128
    corrupt: dict[int, list[str]] = field(default_factory=dict)
    #: step -> why its manifest, snapshot or pieces could not be read
    unreadable: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unreadable)

    @property
    def damaged_steps(self) -> list[int]:
        return sorted(set(self.missing) | set(self.corrupt) | set(self.unreadable))


@dataclass(frozen=True)
class RestoreReport:
    """What ``restore_to`` wrote: the step, keys and bytes copied, and where."""

    step: int
    keys: int
    nbytes: int
    target: str
