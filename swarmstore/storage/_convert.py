"""Conversion between replicated and erasure-coded keys, and export to a plain store.

:func:`convert` walks the keys under a prefix and gives each the form the store's
:class:`~swarmstore.storage._fragments.CodingPolicy` names now: fragments on ``k + m``
nodes, or whole copies on ``replicas`` nodes, at the key's current version (by
compare-and-swap with ``heal``, so a write racing it wins), then drops the old copies.
Keys are walked in sorted order and a journal under the store's state dir records the
last key done, so an interrupted conversion resumes where it stopped. :func:`export`
copies every key (decoded) into any zarr store, which plain zarr then reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash
from zarr.core.buffer import default_buffer_prototype

from swarmstore.network import qos
from swarmstore.storage._coded_maint import move_coded
from swarmstore.storage._maintenance import RebalanceReport, inventory

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from swarmstore.storage._coordinator import Coordinator

__all__ = ["ConvertReport", "convert", "export"]


@dataclass
class ConvertReport(RebalanceReport):
    """What a conversion did: a rebalance's counts (a converted key's copies move to its
    new layout), plus ``ok``; ``complete`` is False when stopped early (rerun resumes)."""

    @property
    def ok(self) -> bool:
        return self.complete and not (self.failed or self.unreachable)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "ok": self.ok}


def _journal(store: Coordinator, prefix: str) -> Any:
    policy = repr(getattr(store, "coding", None))
    ident = xxhash.xxh3_64_hexdigest(f"{prefix}|{policy}|{store.replicas}".encode())
    return store.hints.directory / f"convert-{ident}.json"


async def convert(
    store: Coordinator, prefix: str = "", *, limit: int | None = None
) -> ConvertReport:
    """Give every key under ``prefix`` the form (coded or replicated) the policy names now."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"convert limit must be a non-negative integer, got {limit!r}")
    report = ConvertReport()
    journal = _journal(store, prefix)
    cursor = json.loads(journal.read_text()).get("cursor") if journal.exists() else None
    report.resumed_after = cursor
    with qos("bulk"):
        holders, report.unreachable = await inventory(store)
        keys = [
            k for k in sorted(holders) if k.startswith(prefix) and (cursor is None or k > cursor)
        ]
        if limit is not None and limit < len(keys):
            keys, report.complete = keys[:limit], False
        for i, key in enumerate(keys):
            await move_coded(store, key, holders[key], report)
            report.keys += 1
            if (i + 1) % 64 == 0 or i + 1 == len(keys):
                _save(journal, key)
    if report.complete and not report.unreachable and not report.failed:
        journal.unlink(missing_ok=True)
    return report


def _save(journal: Any, key: str) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cursor": key}))
    os.replace(tmp, journal)


async def export(source: Store, target: Store, prefix: str = "") -> int:
    """Copy every key under ``prefix`` of ``source`` (coded keys decoded) to ``target``,
    a plain zarr store; returns how many keys were copied."""
    proto = default_buffer_prototype()
    count = 0
    async for key in source.list_prefix(prefix):
        value = await source.get(key, proto)
        if value is None:
            continue  # deleted meanwhile
        await target.set(key, value)
        count += 1
    return count
