"""Retention (which checkpoints to keep) and garbage collection (what to delete).

:class:`RetentionPolicy` is a plain decision object: given the committed checkpoints it
returns the steps to keep. :func:`collect_garbage` acts on a store:

1. take ``locks/gc.json`` with a conditional put (one collection at a time; a lock older
   than the lease is considered abandoned and broken);
2. delete the manifests retention drops;
3. list ``objects/``;
4. list ``inflight/``: if any save is in flight (its marker younger than the lease),
   stop here: the sweep is deferred, manifests are still pruned;
5. list the manifests again and collect every hash they name;
6. delete each object listed in 3 that no manifest names.

Why this is safe beside a concurrent save: a save writes its ``inflight`` marker before
anything else and deletes it only after its manifest is committed. If the marker is
seen in 4 nothing is swept. If it was already gone, the save committed before 4, so
its manifest is read in 5 and its objects are live. If it appears after 4, every object
the save writes comes after the listing in 3 and is not a candidate, and the parent
manifest it reuses objects from was read after 2 and, collections being serialised by
the lock, is still there in 5. The one assumption: a save finishes within the lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from zarr.core.buffer import default_buffer_prototype

from swarmstore.checkpoint._commit import put_if_absent
from swarmstore.checkpoint._manifest import (
    GC_LOCK,
    INFLIGHT,
    MANIFESTS,
    OBJECTS,
    Manifest,
    manifest_key,
    step_from_manifest_key,
)
from swarmstore.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Sequence

    from zarr.abc.store import Store

__all__ = ["GCReport", "KeepBest", "RetentionPolicy", "collect_garbage"]

logger = logging.getLogger(__name__)


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


async def _limited(aws: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[Any]) -> Any:
        async with sem:
            return await aw

    return await asyncio.gather(*(one(a) for a in aws))


async def _keys(store: Store, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


async def read_json(store: Store, key: str) -> dict[str, Any] | None:
    """A small JSON object from the store; None when absent or not a JSON object."""
    buf = await store.get(key, default_buffer_prototype())
    if buf is None:
        return None
    try:
        doc = json.loads(buf.to_bytes())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _expired(doc: dict[str, Any] | None, lease: float, now: float) -> bool:
    started = doc.get("started") if doc else None
    return not isinstance(started, int | float) or now - started > lease


@dataclass
class Listing:
    """The manifests under ``manifests/``: valid ones, invalid steps, vanished steps, strays."""

    manifests: list[Manifest]
    bad: list[int]
    gone: list[int]
    strays: list[str]


async def load_manifests(
    store: Store, limit: int = 32, known: dict[int, Manifest] | None = None
) -> Listing:
    """List and read every committed manifest (reusing ``known`` ones: they never change)."""
    from swarmstore.checkpoint._store import forget_listings

    keys = await _keys(store, MANIFESTS)
    steps = sorted(s for k in keys if (s := step_from_manifest_key(k)) is not None)
    proto = default_buffer_prototype()
    known = known or {}

    async def load(step: int) -> Manifest | bool | None:
        if step in known:
            return known[step]
        buf = await store.get(manifest_key(step), proto)
        if buf is None and forget_listings(store):
            buf = await store.get(manifest_key(step), proto)
        if buf is None:
            return False  # listed, then gone
        try:
            return Manifest.from_bytes(buf.to_bytes(), where=f"manifest of step {step}")
        except ManifestError as e:
            logger.warning("%s", e)
            return None

    loaded = await _limited((load(s) for s in steps), limit)
    return Listing(
        manifests=[m for m in loaded if isinstance(m, Manifest)],
        bad=[s for s, m in zip(steps, loaded, strict=True) if m is None],
        gone=[s for s, m in zip(steps, loaded, strict=True) if m is False],
        strays=[k for k in keys if step_from_manifest_key(k) is None],
    )


async def _take_lock(store: Store, lease: float) -> str | None:
    token = uuid.uuid4().hex
    body = json.dumps({"id": token, "started": time.time()}).encode()
    for _ in range(2):
        if await put_if_absent(store, GC_LOCK, body):
            return token
        held = await read_json(store, GC_LOCK)
        if not _expired(held, lease, time.time()):
            return None
        logger.warning("Breaking an abandoned garbage-collection lock %s", held)
        await store.delete(GC_LOCK)
    return None


async def collect_garbage(
    store: Store, policy: RetentionPolicy, *, lease: float, limit: int = 32
) -> GCReport:
    """Apply ``policy`` to the checkpoints in ``store`` and delete unnamed objects."""
    token = await _take_lock(store, lease)
    if token is None:
        return GCReport(deferred=True, reason="another garbage collection holds locks/gc.json")
    try:
        return await _collect(store, policy, lease, limit)
    finally:
        held = await read_json(store, GC_LOCK)
        if held is not None and held.get("id") == token:
            await store.delete(GC_LOCK)


async def _collect(store: Store, policy: RetentionPolicy, lease: float, limit: int) -> GCReport:
    first = await load_manifests(store, limit)
    keep = policy.select(first.manifests)
    drop = [m.step for m in first.manifests if m.step not in keep]
    await _limited((store.delete(manifest_key(s)) for s in drop), limit)
    report = GCReport(kept=sorted(keep | set(first.bad)), deleted_manifests=drop)
    candidates = await _keys(store, OBJECTS)
    now = time.time()
    markers = await _keys(store, INFLIGHT)
    docs = await _limited((read_json(store, k) for k in markers), limit)
    live_markers = [k for k, d in zip(markers, docs, strict=True) if not _expired(d, lease, now)]
    await _limited(
        (store.delete(k) for k, d in zip(markers, docs, strict=True) if _expired(d, lease, now)),
        limit,
    )
    if live_markers:
        report.deferred, report.reason = True, f"{len(live_markers)} save(s) in flight"
        return report
    # Manifests are create-only and only collections (serialised by the lock) delete them,
    # so a step read above and not dropped is still the same manifest: no need to re-read.
    kept = {m.step: m for m in first.manifests if m.step in keep}
    second = await load_manifests(store, limit, known=kept)
    if second.bad or second.gone:
        unreadable = second.bad + second.gone
        report.deferred = True
        report.reason = f"unreadable manifests {unreadable}: cannot tell which objects they name"
        return report
    live = set().union(*(m.hashes() for m in second.manifests))
    doomed = [k for k in candidates if k[len(OBJECTS) :].replace("/", "", 1) not in live]
    # temporary files of interrupted commits (LocalStore writes name.<uuid>.partial first)
    doomed += second.strays
    await _limited((store.delete(k) for k in doomed), limit)
    report.deleted_objects = len(doomed)
    logger.debug("GC kept %s, dropped %s, deleted %d objects", keep, drop, len(doomed))
    return report
