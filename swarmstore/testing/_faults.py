"""Faults: what to inject into a store or a node (latency, errors, outages, corruption).

A leaf of the test bed: :class:`~swarmstore.testing.FaultyStore` (``_faulty``) and
``FaultyNode`` (``_faulty_node``) both read the same ``Faults`` object, which a test can
flip while it runs (``faults.down = True``).
"""

from __future__ import annotations

import asyncio
import errno
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from swarmstore.errors import NodeUnavailable

__all__ = ["Faults", "flip_byte"]


def flip_byte(data: bytes, index: int | None = None) -> bytes:
    """``data`` with one byte inverted (the middle one by default); empty stays empty."""
    if not data:
        return data
    i = len(data) // 2 if index is None else index % len(data)
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


@dataclass
class Faults:
    """What goes wrong, and counters of what happened.

    - ``latency``: seconds added to every request; ``jitter``: extra uniform random seconds
    - ``error_rate``: probability that a request fails with :class:`NodeUnavailable`
    - ``down``: every request fails (an outage)
    - ``corrupt_reads``: keys whose bytes come back with one byte flipped (``"*"`` for all)
    - ``fail_writes``: writes fail while reads still work (:class:`NodeUnavailable`)
    - ``fail_commits``: staging works, publishing fails (an S3 PUT that fails)
    - ``full_disk`` / ``read_only``: writes fail with ``ENOSPC`` / ``EROFS``: the node's
      answer, not an outage
    - ``crash_after``: node operations ("commit", "bury", "prepare", ...) that do all their
      work and then raise, as if the reply were lost
    - ``half``: operations that do half their work and then raise ("bury": the data is
      removed, the tombstone never written; "prepare": staged, the answer lost)
    - ``frozen``: every request waits (a SIGSTOPped node) until it is cleared
    - ``hold_next``: ``{op: n}`` holds the next ``n`` requests of ``op`` while ``gate`` is
      closed (a laggard that lands late, after later writes)
    """

    latency: float = 0.0
    jitter: float = 0.0
    error_rate: float = 0.0
    down: bool = False
    corrupt_reads: set[str] = field(default_factory=set)
    fail_writes: bool = False
    fail_commits: bool = False
    full_disk: bool = False
    read_only: bool = False
    crash_after: set[str] = field(default_factory=set)
    half: set[str] = field(default_factory=set)
    frozen: bool = False
    hold_next: dict[str, int] = field(default_factory=dict)
    gate: bool = False
    seed: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def count(self, op: str) -> None:
        with self._lock:
            self.counts[op] = self.counts.get(op, 0) + 1

    def delay(self) -> float:
        extra = self._rng.uniform(0, self.jitter) if self.jitter else 0.0
        return self.latency + extra

    async def before(self, op: str, name: str, *, write: bool = False) -> None:
        """Apply latency (and a freeze), then raise if this request is to fail."""
        self.count(op)
        d = self.delay()
        if d > 0:
            await asyncio.sleep(d)
        while self.frozen:
            await asyncio.sleep(0.005)
        if self.hold_next.get(op):
            self.hold_next[op] -= 1
            while self.gate:
                await asyncio.sleep(0.002)
        self._refuse(op, name, write)

    def _refuse(self, op: str, name: str, write: bool) -> None:
        """Raise the injected outage, write failure or random error due now, if any."""
        if self.down:
            raise NodeUnavailable(f"{name} is down (injected outage)")
        if write:
            self.refuse_write(op, name)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise NodeUnavailable(f"{name}: injected error on {op}")

    def refuse_write(self, op: str, name: str) -> None:
        """Raise the injected write failure, if any."""
        if self.fail_writes:
            raise NodeUnavailable(f"{name} refuses writes (injected)")
        if self.full_disk:
            raise OSError(errno.ENOSPC, f"{name}: no space left on device (injected)")
        if self.read_only:
            raise OSError(errno.EROFS, f"{name}: read-only file system (injected)")
        if op == "commit" and self.fail_commits:
            raise NodeUnavailable(f"{name}: commit failed (injected)")

    def after(self, op: str, name: str) -> None:
        """Raise when ``op`` is to lose its reply (it did its work)."""
        if op in self.crash_after:
            raise NodeUnavailable(f"{name}: {op} done, reply lost (injected crash)")

    @property
    def immediate(self) -> bool:
        """No latency, jitter or freeze: sync paths may run (no await needed)."""
        return not (self.latency or self.jitter or self.frozen)

    def before_sync(self, op: str, name: str, *, write: bool = False) -> None:
        """:meth:`before` for synchronous callers."""
        self.count(op)
        d = self.delay()
        if d > 0:
            time.sleep(d)
        self._refuse(op, name, write)

    def corrupts(self, key: str) -> bool:
        return "*" in self.corrupt_reads or key in self.corrupt_reads
