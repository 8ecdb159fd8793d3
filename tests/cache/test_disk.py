"""DiskTier under concurrency (threads, processes), invalidation races and a full disk."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from swarmstore.cache import DiskTier

# A value names its key and version in every 16-byte cell, so a torn or mixed-up read shows.
_VALUE = """
def value(key, version, cells):
    return (f"{key}:{version}:".encode().ljust(16, b"."))[:16] * cells

def check(key, data):
    if data is None:
        return None
    cell = data[:16]
    assert cell.startswith(f"{key}:".encode()), (key, cell)
    assert data == cell * (len(data) // 16) and len(data) % 16 == 0, (key, "torn")
    return int(cell.split(b":")[1])
"""
exec(_VALUE)  # defines value() and check() here too


def hammer(tier: DiskTier, seed: int, seconds: float, keys: int = 12) -> dict[str, int]:
    """Random writes, reads and invalidations; every read is checked."""
    rng = np.random.default_rng(seed)
    counts = {"reads": 0, "hits": 0, "writes": 0}
    deadline = time.monotonic() + seconds
    version = 0
    while time.monotonic() < deadline:
        key = f"k{rng.integers(keys)}"
        op = rng.random()
        if op < 0.45:
            version += 1
            data = value(key, seed * 10**6 + version, int(rng.integers(1, 600)))  # noqa: F821
            tier.write("ns", key, None, data)
            counts["writes"] += 1
        elif op < 0.9:
            entry = tier.read("ns", key, None)
            counts["reads"] += 1
            if entry is not None:
                check(key, bytes(entry.data))  # noqa: F821
                counts["hits"] += 1
        else:
            tier.invalidate("ns", key)
    return counts


def test_threads_share_a_disk_tier_safely(tmp_path: pathlib.Path) -> None:
    tier = DiskTier(tmp_path / "c", max_bytes=200_000, fsync=False)
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            results.append(hammer(tier, seed, 0.8))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(r["hits"] for r in results) > 0
    assert tier.stats()["bytes"] <= 200_000 and tier.disk_usage() <= 200_000
    assert tier.stats()["corrupt"] == 0
    tier.close()


_PROCESS_SCRIPT = """
import json, sys, time
import numpy as np
from swarmstore.cache import DiskTier
{value}
{hammer}
tier = DiskTier(sys.argv[1], max_bytes=200_000, fsync=True)
out = hammer(tier, int(sys.argv[2]), float(sys.argv[3]))
out["corrupt"] = tier.stats()["corrupt"]
tier.close()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_processes_share_a_cache_dir(tmp_path: pathlib.Path) -> None:
    import inspect

    script = tmp_path / "worker.py"
    hammer_src = textwrap.dedent(inspect.getsource(hammer)).replace(
        "def hammer(tier: DiskTier, seed: int, seconds: float, keys: int = 12) -> dict[str, int]:",
        "def hammer(tier, seed, seconds, keys=12):",
    )
    script.write_text(_PROCESS_SCRIPT.format(value=_VALUE, hammer=hammer_src))
    cache = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache), str(seed), "1.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(o["writes"] > 10 and o["corrupt"] == 0 for o in outs), outs
    assert sum(o["hits"] for o in outs) > 0
    tier = DiskTier(cache, max_bytes=200_000)
    assert tier.stats()["bytes"] <= 200_000 and tier.disk_usage() <= 200_000
    assert not list(cache.rglob(".*.tmp"))
    tier.close()


def test_fill_started_before_another_process_invalidated_is_dropped(
    tmp_path: pathlib.Path,
) -> None:
    reader = DiskTier(tmp_path / "c", max_bytes=2**20, fsync=False)
    writer = DiskTier(tmp_path / "c", max_bytes=2**20, fsync=False)  # its own index handle
    ticket = reader.ticket("ns", "k")  # the reader begins fetching the old value
    writer.invalidate("ns", "k")  # the writer replaces the value and invalidates
    assert reader.write("ns", "k", None, b"old", ticket=ticket) is False
    assert writer.read("ns", "k", None) is None
    assert reader.write("ns", "k", None, b"new", ticket=reader.ticket("ns", "k")) is True
    ticket = reader.ticket("ns", "k2")
    writer.invalidate_prefix("ns", "")
    assert reader.read("ns", "k", None) is None
    assert reader.write("ns", "k2", None, b"old", ticket=ticket) is False  # under the prefix
    reader.close()
    writer.close()


def test_range_reads_verify_only_needed_blocks(tmp_path: pathlib.Path) -> None:
    tier = DiskTier(tmp_path / "c", max_bytes=2**24, fsync=False)
    data = np.random.default_rng(0).bytes(3 * 2**20 + 5)
    tier.write("ns", "big", None, data)
    path = next(p for p in (tmp_path / "c" / "data").rglob("*") if p.is_file())
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # corrupt the last block only
    path.write_bytes(bytes(raw))
    assert tier.read("ns", "big", ("r", 10, 100)).data == data[10:100]  # block 0 is fine
    assert tier.read("ns", "big", ("s", 4)) is None  # the last block fails: dropped
    assert tier.stats()["corrupt"] == 1
    assert tier.read("ns", "big", None) is None
    tier.close()


_FULL_DISK_SCRIPT = """
import resource, signal, sys, warnings
import numpy as np, zarr
from zarr.storage import LocalStore
from swarmstore.cache import DiskTier, TieredStore
from swarmstore.errors import CacheWarning

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
store = TieredStore(LocalStore(sys.argv[1]), memory_bytes=0,
                    disk=DiskTier(sys.argv[2], max_bytes=2**24, fsync=False))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    z = zarr.open_array(store, mode="r")
    ok = bool((z[:] == np.arange(z.shape[0])).all())
    store.flush()
    ok = ok and bool((z[:] == np.arange(z.shape[0])).all())
kinds = {type(w.message).__name__ for w in caught}
print(ok, store.stats()["disk"]["errors"] > 0, "CacheWarning" in kinds)
"""


def test_full_disk_reads_still_work_with_a_warning(tmp_path: pathlib.Path) -> None:
    z = zarr.create_array(
        LocalStore(tmp_path / "data"), shape=(40_000,), chunks=(10_000,), dtype="f8",
        compressors=None,
    )  # fmt: skip
    z[:] = np.arange(40_000)
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"], out.stdout


def test_hits_and_fills_never_wait_for_a_locked_index(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the index's write lock (a long eviction, say) must not stall
    a read: hits keep their access times in memory and fills queue for the fill thread."""
    import sqlite3

    from swarmstore.cache import _diskengine

    monkeypatch.setattr(_diskengine, "_HOUSEKEEPING_EVERY", 0.0)  # every hit writes its atime
    tier = DiskTier(tmp_path / "c", max_bytes=2**24, fsync=False)
    tier.write("ns", "a", None, b"x" * 1000)
    other = sqlite3.connect(tmp_path / "c" / "index.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # hold the write lock, as another worker would
    done: list[bytes] = []

    def reader() -> None:
        for _ in range(3):
            entry = tier.read("ns", "a", None)
            assert entry is not None
            done.append(bytes(entry.data))
            time.sleep(0.01)
        tier.submit("ns", "b", None, b"y" * 1000, ticket=tier.ticket("ns", "b"))
        done.append(b"submitted")

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(timeout=10)
    alive = thread.is_alive()
    other.execute("COMMIT")  # release the lock whatever happened, then judge
    thread.join()
    other.close()
    assert not alive, "a hit or a submit waited for the index lock"
    assert done == [b"x" * 1000] * 3 + [b"submitted"]
    tier.flush()
    assert bytes(tier.read("ns", "b", None).data) == b"y" * 1000  # the fill landed after
    tier.close()


def test_access_times_reach_the_index_without_fills(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hits alone (no fills to ride along with) still update the LRU order."""
    from swarmstore.cache import _diskengine

    monkeypatch.setattr(_diskengine, "_HOUSEKEEPING_EVERY", 0.0)
    bound = 600_000  # two values of 200 KB fit beside the index, three do not
    writer = DiskTier(tmp_path / "c", max_bytes=bound, fsync=False)
    for key in ("old", "mid"):
        assert writer.write("ns", key, None, b"v" * 200_000)
    reader = DiskTier(tmp_path / "c", max_bytes=bound, fsync=False)
    assert reader.read("ns", "old", None) is not None  # "old" is now the most recent
    reader.flush()
    assert writer.write("ns", "new", None, b"v" * 200_000)  # evicts "mid", not "old"
    assert reader.read("ns", "old", None) is not None
    assert reader.read("ns", "mid", None) is None
    reader.close()
    writer.close()


def test_fill_thread_batches_and_exits_on_close(tmp_path: pathlib.Path) -> None:
    tier = DiskTier(tmp_path / "c", max_bytes=2**24, fsync=False)
    for i in range(20):
        tier.submit("ns", f"k{i}", None, bytes([i]) * 100, ticket=tier.ticket("ns", f"k{i}"))
    tier.flush()
    assert tier.stats()["writes"] == 20
    assert all(bytes(tier.read("ns", f"k{i}", None).data) == bytes([i]) * 100 for i in range(20))
    thread = tier._engine.fills._thread
    tier.close()
    assert tier._engine.fills._thread is None and (thread is None or not thread.is_alive())
    tier.submit("ns", "again", None, b"z", ticket=tier.ticket("ns", "again"))  # after close
    tier.close()
    assert bytes(tier.read("ns", "again", None).data) == b"z"
    tier.close()


def test_a_truncated_file_is_corrupt_never_returned(tmp_path: pathlib.Path) -> None:
    tier = DiskTier(tmp_path / "c", max_bytes=2**25, fsync=False)
    small, big = b"s" * 5000, np.random.default_rng(1).bytes(5 * 2**20)  # big: read in parts
    tier.write("ns", "small", None, small)
    tier.write("ns", "big", None, big)
    for path in (p for p in (tmp_path / "c" / "data").rglob("*") if p.is_file()):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 7)
    assert tier.read("ns", "small", None) is None
    assert tier.read("ns", "big", ("r", 0, 10)) is None
    assert tier.stats()["corrupt"] == 2
    tier.close()
