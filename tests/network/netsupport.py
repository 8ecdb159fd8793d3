"""Sources for router tests: real zarr MemoryStores behind FaultyStore fault injection.

(A uniquely named module rather than conftest.py, so imports never meet another room's conftest.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from swarmstore.errors import ChecksumMismatch
from swarmstore.testing import Faults, FaultyStore

PROTO = default_buffer_prototype()
PAYLOAD = b"chunk-bytes" * 100


@dataclass(eq=False)
class Source:
    """A storage-node-like source: ``name``, ``host``, ``zone`` and a faulty zarr store."""

    name: str
    host: str | None = None
    zone: str | None = None
    faults: Faults = field(default_factory=Faults)
    store: FaultyStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = FaultyStore(MemoryStore(), self.faults, name=self.name)

    def __repr__(self) -> str:
        return f"Source({self.name!r})"

    async def put(self, key: str, data: bytes = PAYLOAD) -> None:
        await self.store._store.set(key, PROTO.buffer.from_bytes(data))

    async def ping(self) -> None:
        await self.store.exists("ping")


def name(src: Source) -> str:
    return src.name


async def make_sources(n: int = 3) -> list[Source]:
    srcs = [Source(f"n{i}", faults=Faults(seed=i)) for i in range(n)]
    for s in srcs:
        await s.put("k")
    return srcs


def reader(key: str):
    """An ``attempt`` like ReplicatedStore's: bytes, KeyError when absent, corrupt -> mismatch."""

    async def attempt(src: Source) -> bytes:
        buf = await src.store.get(key, PROTO)
        if buf is None:
            raise KeyError(key)
        data = buf.to_bytes()
        if data != PAYLOAD:
            raise ChecksumMismatch(f"{src.name}: {key} fails its checksum")
        return data

    return attempt


class Script:
    """An ``attempt`` whose outcome per source is set by the test; it logs what it saw."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.errors: dict[str, BaseException] = {}
        self.seen: list[tuple[str, str]] = []

    def block(self, *names: str) -> None:
        for nm in names:
            self.gates[nm] = asyncio.Event()

    async def __call__(self, src):
        self.seen.append((src.name, "start"))
        try:
            if src.name in self.gates:
                await self.gates[src.name].wait()
            if src.name in self.errors:
                raise self.errors[src.name]
        except asyncio.CancelledError:
            self.seen.append((src.name, "cancelled"))
            raise
        self.seen.append((src.name, "done"))
        return src.name
