"""Retention (which checkpoints to keep) and garbage collection (what to delete).

:class:`RetentionPolicy` is a plain decision object: given the committed checkpoints it
returns the steps to keep. :func:`collect_garbage` acts on a store:

1. take ``locks/gc.json`` with a conditional put (one collection at a time) and renew it
   (``_lease``); a lock whose holder stopped renewing for a lease is broken;
2. delete the manifests retention drops;
3. list ``objects/``;
4. list ``inflight/``: if any save is in flight (its marker renewed within the lease),
   stop here: the sweep is deferred, manifests are still pruned. Dead markers are
   deleted, and the sweep waits for the next collection;
5. list the manifests again and collect every hash they name;
6. delete each object listed in 3 that no manifest names.

Why this is safe beside a concurrent save: a save writes its ``inflight`` marker before
anything else and deletes it only after its manifest is committed. If the marker is
seen in 4 nothing is swept. If it was already gone, the save committed before 4, so
its manifest is read in 5 and its objects are live. If it appears after 4, every object
the save writes comes after the listing in 3 and is not a candidate, and the parent
manifest it reuses objects from was read after 2 and, collections being serialised by
the lock, is still there in 5. A save declared dead (no heartbeat for a lease) finds its
marker gone when it checks, right before committing, and gives up.

Damaged manifests are skipped and reported (``GCReport.damaged``); a manifest of a newer
schema defers the sweep, since this version cannot tell which objects it names.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from zarr.core.buffer import default_buffer_prototype

from swarmstore import _clock
from swarmstore.checkpoint import _trace as trace
from swarmstore.checkpoint._lease import Lease, LeaseTerms, is_dead, read_doc
from swarmstore.checkpoint._manifest import (
    GC_LOCK,
    INFLIGHT,
    MANIFESTS,
    OBJECTS,
    Manifest,
    manifest_key,
    step_from_manifest_key,
)
from swarmstore.errors import ConfigError, ManifestError, ManifestVersionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Sequence

    from zarr.abc.store import Store

__all__ = ["GCReport", "KeepBest", "RetentionPolicy", "collect_garbage"]

logger = logging.getLogger(__name__)

#: LocalStore's temporary file of an interrupted manifest write (``<name>.<uuid>.partial``):
#: the only names under ``manifests/`` a collection deletes besides dropped steps.
_TEMP_NAME = re.compile(r"manifests/\d{20}\.[0-9a-f]{32}\.partial")


class _HasStep(Protocol):
    step: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``n`` checkpoints with the best ``metadata[metric]`` (``mode`` min or max)."""

    metric: str
    n: int = 1
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"keep_best mode must be 'min' or 'max', got {self.mode!r}")
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ConfigError(f"keep_best n must be a positive integer, got {self.n!r}")


@dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints to keep; a checkpoint any rule keeps is kept.

    The newest checkpoint is always kept. With no rule at all, everything is kept.

    >>> policy = RetentionPolicy(keep_last=2, keep_every=10)
    >>> from types import SimpleNamespace as C
    >>> sorted(policy.select([C(step=s, metadata={}) for s in range(25)]))
    [0, 10, 20, 23, 24]
    """

    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: KeepBest | None = None

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def keeps_all(self) -> bool:
        """True when no rule is set (nothing is ever dropped)."""
        return self.keep_last is None and self.keep_every is None and self.keep_best is None

    def select(self, checkpoints: Iterable[_HasStep]) -> set[int]:
        """The steps to keep out of ``checkpoints``."""
        ordered = sorted(checkpoints, key=lambda c: c.step)
        if self.keeps_all or not ordered:
            return {c.step for c in ordered}
        keep = {ordered[-1].step}
        if self.keep_last is not None:
            keep.update(c.step for c in ordered[-self.keep_last :])
        if self.keep_every is not None:
            keep.update(c.step for c in ordered if c.step % self.keep_every == 0)
        if self.keep_best is not None:
            keep.update(_best(ordered, self.keep_best))
        return keep


def _best(ordered: Sequence[_HasStep], rule: KeepBest) -> list[int]:
    scored = []
    for c in ordered:
        value = c.metadata.get(rule.metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            scored.append((value if rule.mode == "min" else -value, -c.step, c.step))
    return [step for *_, step in sorted(scored)[: rule.n]]


@dataclass
class GCReport:
    """What one garbage collection did."""

    kept: list[int] = field(default_factory=list)
    deleted_manifests: list[int] = field(default_factory=list)
    deleted_objects: int = 0
    deferred: bool = False
    reason: str = ""
    #: Steps whose manifests are unreadable (damaged): skipped, kept, reported.
    damaged: list[int] = field(default_factory=list)


async def _limited(aws: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[Any]) -> Any:
        async with sem:
            return await aw

    return await asyncio.gather(*(one(a) for a in aws))


async def _keys(store: Store, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


@dataclass
class Listing:
    """The manifests under ``manifests/``: valid ones, invalid steps, vanished steps, strays."""

    manifests: list[Manifest]
    bad: list[int]
    gone: list[int]
    strays: list[str]
    #: Steps whose manifests have a newer schema version than this swarmstore reads.
    newer: list[int] = field(default_factory=list)


async def load_manifests(
    store: Store, limit: int = 32, known: dict[int, Manifest] | None = None
) -> Listing:
    """List and read every committed manifest (reusing ``known`` ones: they never change)."""
    from swarmstore.checkpoint._store import forget_listings

    keys = await _keys(store, MANIFESTS)
    steps = sorted(s for k in keys if (s := step_from_manifest_key(k)) is not None)
    proto = default_buffer_prototype()
    known = known or {}

    async def load(step: int) -> Manifest | str:
        if step in known:
            return known[step]
        buf = await store.get(manifest_key(step), proto)
        if buf is None and forget_listings(store):
            buf = await store.get(manifest_key(step), proto)
        if buf is None:
            return "gone"  # listed, then deleted
        try:
            return Manifest.from_bytes(buf.to_bytes(), where=f"manifest of step {step}")
        except ManifestVersionError as e:
            logger.warning("%s", e)
            return "newer"
        except ManifestError as e:
            logger.warning("Skipping a damaged checkpoint: %s", e)
            return "bad"

    loaded = await _limited((load(s) for s in steps), limit)
    pairs = list(zip(steps, loaded, strict=True))
    return Listing(
        manifests=[m for m in loaded if isinstance(m, Manifest)],
        bad=[s for s, m in pairs if m == "bad"],
        gone=[s for s, m in pairs if m == "gone"],
        strays=[k for k in keys if _TEMP_NAME.fullmatch(k)],
        newer=[s for s, m in pairs if m == "newer"],
    )


async def collect_garbage(
    store: Store, policy: RetentionPolicy, *, terms: LeaseTerms, limit: int = 32
) -> GCReport:
    """Apply ``policy`` to the checkpoints in ``store`` and delete unnamed objects."""
    lock = Lease(store, GC_LOCK, {"what": "garbage collection"}, terms)
    if not await lock.acquire():
        return GCReport(deferred=True, reason="another garbage collection holds locks/gc.json")
    try:
        trace.point("gc:locked")
        return await _collect(store, policy, terms, limit, lock)
    finally:
        await lock.release()
        trace.point("gc:unlocked")


async def _markers(store: Store, terms: LeaseTerms, limit: int) -> tuple[int, int]:
    """Live and dead save markers; dead ones are deleted (their saves can never commit)."""
    keys = await _keys(store, INFLIGHT)
    docs = await _limited((read_doc(store, k) for k in keys), limit)
    now = _clock.wall()
    dead = [
        k for k, d in zip(keys, docs, strict=True) if d is not None and is_dead(d, terms.lease, now)
    ]
    await _limited((store.delete(k) for k in dead), limit)
    live = sum(d is not None for d in docs) - len(dead)
    return live, len(dead)


async def _collect(
    store: Store, policy: RetentionPolicy, terms: LeaseTerms, limit: int, lock: Lease
) -> GCReport:
    first = await load_manifests(store, limit)
    keep = policy.select(first.manifests)
    drop = [m.step for m in first.manifests if m.step not in keep]
    await _limited((store.delete(manifest_key(s)) for s in drop), limit)
    trace.point("gc:pruned")
    report = GCReport(kept=sorted(keep), deleted_manifests=drop, damaged=first.bad)
    candidates = await _keys(store, OBJECTS)
    live, dead = await _markers(store, terms, limit)
    if live or dead:
        report.deferred = True
        report.reason = (
            f"{live} save(s) in flight"
            if live
            else (f"removed {dead} dead save marker(s); the sweep waits for the next collection")
        )
        return report
    # Manifests are create-only and only collections (serialised by the lock) delete them,
    # so a step read above and not dropped is still the same manifest: no need to re-read.
    kept = {m.step: m for m in first.manifests if m.step in keep}
    second = await load_manifests(store, limit, known=kept)
    if second.newer or second.gone or not await lock.held():
        report.deferred = True
        report.reason = (
            f"manifests {second.newer} are of a newer schema: cannot tell what they name"
            if second.newer
            else "manifests vanished or the lock was lost while collecting"
        )
        return report
    report.damaged = second.bad
    live_hashes = set().union(*(m.hashes() for m in second.manifests))
    doomed = [k for k in candidates if k[len(OBJECTS) :].replace("/", "", 1) not in live_hashes]
    doomed += second.strays  # temporary files of interrupted commits
    trace.point("gc:sweeping")
    await _limited((store.delete(k) for k in doomed), limit)
    report.deleted_objects = len(doomed)
    logger.debug("GC kept %s, dropped %s, deleted %d objects", keep, drop, len(doomed))
    return report
