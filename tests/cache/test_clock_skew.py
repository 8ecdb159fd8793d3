"""Ordering inside the cache uses generations, never clocks (issue 12, issue 17).

Two processes share one disk tier with clocks two hours apart (``SWARMSTORE_CLOCK_OFFSET``,
read by ``swarmstore._clock``). The parent drives both, step by step: whichever clock is
ahead, a fill that began before an invalidation is never published, and one that began
after it is; a value filled by the process whose clock is ahead still expires for the
other (its ``ttl`` sees a fill time in its future as expired, not as fresh).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

_PEER = """
import asyncio, sys, time
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore
from swarmstore import _clock
from swarmstore.cache import DiskTier, TieredStore

tier = DiskTier(sys.argv[1], fsync=False)
store = TieredStore(LocalStore(sys.argv[2]), memory_bytes=0, disk=tier, ttl=60)
tickets = {}
print("ready", _clock.wall() - time.time(), flush=True)
for line in sys.stdin:
    op, *args = line.split()
    if op == "ticket":
        tickets[args[0]] = tier.ticket("ns", args[0])
        out = "ok"
    elif op == "invalidate":
        tier.invalidate("ns", args[0])
        out = "ok"
    elif op == "write":
        out = tier.write("ns", args[0], None, args[1].encode(), ticket=tickets.pop(args[0]))
    elif op == "read":
        entry = tier.read("ns", args[0], None)
        out = None if entry is None else bytes(entry.data).decode()
    elif op == "peek":  # the TieredStore's entry on disk
        entry = tier.read(store.namespace, args[0], None)
        out = None if entry is None else bytes(entry.data).decode()
    elif op == "get":  # through the TieredStore (ttl 60 s), then wait for its disk fill
        got = asyncio.run(store.get(args[0], default_buffer_prototype()))
        store.flush()
        out = None if got is None else got.to_bytes().decode()
    print(out, flush=True)
"""


class Peer:
    def __init__(self, script: pathlib.Path, cache: pathlib.Path, data: pathlib.Path, offset):
        env = {**os.environ, "SWARMSTORE_CLOCK_OFFSET": str(offset)}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(cache), str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready, skew = self.proc.stdout.readline().split()
        assert ready == "ready" and abs(float(skew) - offset) < 1, skew

    def __call__(self, *words: str) -> str:
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()  # else a ResourceWarning when the Popen is collected


@pytest.mark.timeout(120)
def test_skewed_clocks_cannot_reorder_fills_and_invalidations(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "peer.py"
    script.write_text(_PEER)
    cache, data = tmp_path / "cache", tmp_path / "data"
    ahead = Peer(script, cache, data, offset=3600.0)
    behind = Peer(script, cache, data, offset=-3600.0)
    try:
        for filler, writer in ((ahead, behind), (behind, ahead)):
            # a fill that began before the other's invalidation is dropped ...
            assert filler("ticket", "k") == "ok"
            assert writer("invalidate", "k") == "ok"
            assert filler("write", "k", "old") == "False"
            assert writer("read", "k") == "None"
            # ... and one that began after it is published, and seen by the other
            assert filler("ticket", "k") == "ok"
            assert filler("write", "k", "new") == "True"
            assert writer("read", "k") == "new"
            assert writer("invalidate", "k") == "ok"
            assert filler("read", "k") == "None"

        # ttl across skewed clocks: the process two hours ahead fills "t" ...
        data.mkdir(exist_ok=True)
        (data / "t").write_bytes(b"v1")
        assert ahead("get", "t") == "v1"
        assert behind("peek", "t") == "v1"  # on disk, stamped two hours in behind's future
        (data / "t").write_bytes(b"v2")  # another writer, not through the cache
        # ... behind's ttl (60 s) must not trust a fill time in its future: revalidated
        assert behind("get", "t") == "v2"
    finally:
        ahead.close()
        behind.close()
