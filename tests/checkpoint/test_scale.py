"""Manifests that scale (issue 18): a commit writes manifest bytes in proportion to the chunks
it changed, a restore reads only the pieces it needs, and 1M-chunk arrays work."""

from __future__ import annotations

from collections import Counter

import pytest
import zarr

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._piece import MAX, MIN


class Counting(zarr.storage.WrapperStore):
    """Counts reads and written bytes per top-level prefix (a test instrument)."""

    def __init__(self, store):
        super().__init__(store)
        self.gets: Counter[str] = Counter()
        self.put_bytes: Counter[str] = Counter()

    async def get(self, key, prototype=None, byte_range=None):
        self.gets[key.split("/", 1)[0]] += 1
        return await self._store.get(key, prototype, byte_range)

    async def set(self, key, value):
        self.put_bytes[key.split("/", 1)[0]] += len(value)
        await self._store.set(key, value)

    def reset(self):
        self.gets.clear()
        self.put_bytes.clear()


def _grid_session(mgr, n, values):
    """A session naming an n x n grid of one-byte chunks directly (zarr's encoder is not under
    test here, the manifest is): chunk (i, j) holds ``values[(i * 7 + j) % len(values)]``."""
    session = mgr.session()
    zarr.create_array(session.store, name="x", shape=(n, n), chunks=(1, 1), dtype="u1",
                      fill_value=0, compressors=None)  # fmt: skip
    buf = zarr.core.buffer.default_buffer_prototype().buffer
    from zarr.core.sync import sync

    entries = [sync(session.store.writer.put(buf.from_bytes(bytes([v])))) for v in values]
    changes = session.store.changes
    for i in range(n):
        for j in range(n):
            changes[f"x/c/{i}/{j}"] = entries[(i * 7 + j) % len(entries)]
    return session


def _expected(i, j, values):
    return values[(i * 7 + j) % len(values)]


def test_commit_bytes_follow_the_chunks_changed_and_reads_load_one_piece(tmp_path):
    store = Counting(zarr.storage.LocalStore(tmp_path))
    mgr = CheckpointManager(store)
    values = list(range(1, 200))
    _grid_session(mgr, 200, values).commit()  # 40k chunks
    full = store.put_bytes["pieces"]
    pieces = len(mgr.snapshot().nodes["x"])
    assert 40_000 / MAX <= pieces <= 40_000 / MIN
    store.reset()
    with mgr.session() as s:
        zarr.open_array(s.store, path="x", mode="r+")[150:152, :] = 255  # 1% of the chunks
        s.commit()
    assert store.put_bytes["objects"] == 1  # one new one-byte object
    assert store.put_bytes["pieces"] < full / 10  # a few pieces, not the manifest
    store.reset()
    fresh = CheckpointManager(store)
    arr = fresh.restore()["x"]
    assert arr[150, 7] == 255 and arr[10, 3] == _expected(10, 3, values)
    assert store.gets["pieces"] == 2  # one piece per chunk read, nothing else
    assert fresh.diff(0, 1).changed == sorted(
        f"x/c/{i}/{j}" for i in range(150, 152) for j in range(200)
    )


@pytest.mark.slow
def test_a_million_chunk_array(tmp_path):
    store = Counting(zarr.storage.LocalStore(tmp_path))
    mgr = CheckpointManager(store)
    values = list(range(1, 251))
    info = _grid_session(mgr, 1000, values).commit(metadata={"chunks": 10**6})
    snap = mgr.snapshot()
    assert sum(p.count for p in snap.nodes["x"]) == 10**6 and snap.metadata["chunks"] == 10**6
    assert store.put_bytes["pieces"] < 10**6 * 24  # under 24 bytes per chunk reference
    store.reset()
    with mgr.session() as s:
        zarr.open_array(s.store, path="x", mode="r+")[999, 990:] = 255
        s.commit()
    assert store.put_bytes["pieces"] < 10**6 * 24 / 50
    fresh = CheckpointManager(store)
    store.reset()
    arr = fresh.restore()["x"]
    assert arr[999, 995] == 255 and arr[123, 456] == _expected(123, 456, values)
    assert store.gets["pieces"] <= 2
    assert fresh.verify_report().ok and info.nkeys >= 10**6


def _read_back(tmp_path, expected, picks):
    """The picked chunks and their row neighbours read back as expected (a fresh manager)."""
    arr = CheckpointManager(zarr.storage.LocalStore(tmp_path)).restore()["x"]
    n = len(expected)
    cells = sorted({(i, (j + d) % n) for i, j in picks for d in (-1, 0, 1)})
    rows, cols = zip(*cells, strict=True)
    got = arr.get_coordinate_selection((list(rows), list(cols)))
    assert got.tolist() == [expected[i][j] for i, j in cells]


def test_scattered_changes_patch_pieces_in_place_and_removals_resplit(tmp_path):
    """Changing chunks that exist keeps every piece's keys (same boundaries and counts,
    new bytes); removing and re-adding chunks re-splits the pieces they fall in; every
    state reads back exactly, and diffs name exactly the chunks changed."""
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    values = list(range(1, 100))
    n = 120
    _grid_session(mgr, n, values).commit()
    before = mgr.snapshot().nodes["x"]
    assert len(before) >= 2
    picks = [(i, (i * 37) % n) for i in range(0, n, 3)]  # 40 chunks, all over the grid
    expected = [[_expected(i, j, values) for j in range(n)] for i in range(n)]
    with mgr.session() as s:
        arr = zarr.open_array(s.store, path="x", mode="r+")
        for i, j in picks:
            arr[i, j] = expected[i][j] = 255
        s.commit()
    after = mgr.snapshot().nodes["x"]
    assert [(r.first, r.count) for r in after] == [(r.first, r.count) for r in before]
    assert len({r.hash for r in after} - {r.hash for r in before}) == len(after)
    _read_back(tmp_path, expected, picks)
    assert mgr.diff(0, 1).changed == sorted(f"x/c/{i}/{j}" for i, j in picks)
    with mgr.session() as s:  # the fill value: zarr deletes those chunks
        arr = zarr.open_array(s.store, path="x", mode="r+")
        for i, j in picks:
            arr[i, j] = expected[i][j] = 0
        s.commit()
    assert sum(r.count for r in mgr.snapshot().nodes["x"]) == n * n - len(picks)
    _read_back(tmp_path, expected, picks)
    with mgr.session() as s:  # and back: inserts
        arr = zarr.open_array(s.store, path="x", mode="r+")
        for i, j in picks:
            arr[i, j] = expected[i][j] = 9
        s.commit()
    assert sum(r.count for r in mgr.snapshot().nodes["x"]) == n * n
    _read_back(tmp_path, expected, picks)
    assert mgr.verify_report(steps=[3]).ok
