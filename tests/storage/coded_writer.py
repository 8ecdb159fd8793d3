"""A writer process for tests/storage/test_coded_crash.py: overwrites one coded key with
value 0, 1, 2, ... over six local nodes, printing ``acked i`` after each write returns and
``commit`` after each fragment a node published, so the test can kill -9 it between or
inside any two commits. Run: ``python coded_writer.py ROOT STATE_DIR``."""

from __future__ import annotations

import sys

import numpy as np
from zarr.core.buffer import cpu

from swarmstore.storage import ReplicatedStore
from swarmstore.storage._local import LocalNode

SIZE = 1 << 20


def value(i: int) -> bytes:
    return np.random.default_rng(i).bytes(SIZE)


def _announce_commits() -> None:
    commit = LocalNode.commit

    async def announced(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = await commit(self, *args, **kwargs)
        print("commit", flush=True)
        return out

    LocalNode.commit = announced  # type: ignore[method-assign]


def main(root: str, state: str) -> None:
    _announce_commits()
    nodes = [f"file://{root}/n{i}" for i in range(6)]
    store = ReplicatedStore(nodes, coding={"": (4, 2)}, state_dir=state, create=True)
    i = 0
    while True:
        store.set_sync("k", cpu.Buffer.from_bytes(value(i)))
        print("acked", i, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
