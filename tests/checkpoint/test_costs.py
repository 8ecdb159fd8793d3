"""What checkpoint operations cost a store, counted where the cost lands: requests at a
moto server's access log (``RequestLog``), files in a local directory."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._docs import LocalFiles
from swarmstore.errors import CheckpointNotFoundError
from swarmstore.testing import RequestLog, moto_server

PROTO = default_buffer_prototype()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One moto server process for the module, with its access log."""
    path = tmp_path_factory.mktemp("moto") / "access.log"
    with moto_server(process=True, log=path) as endpoint:
        yield endpoint, RequestLog(path, endpoint.url), endpoint.make_bucket()


def _requests(log: RequestLog) -> dict[str, int]:
    return {method: n for (method, _), n in log.counts().items()}


def test_restoring_the_tip_lists_only_the_branch_then_reads_each_object_once(logged):
    endpoint, log, bucket = logged
    store = endpoint.object_store(bucket, "tip-restore")
    x = np.arange(64 * 64, dtype="f4").reshape(64, 64)
    CheckpointManager(store).save({"x": x}, step=0, encoding={"x": {"chunks": (16, 16)}})
    x[:16, :16] = -1
    CheckpointManager(store).save({"x": x}, step=1, encoding={"x": {"chunks": (16, 16)}})
    fresh = CheckpointManager(store)  # nothing cached: every document is read
    log.clear()
    restored = fresh.open_store()
    pieces = sum(len(refs) for refs in restored.base.nodes.values())
    assert np.array_equal(zarr.open_array(restored, path="x", mode="r")[:], x)
    # one listing (the branch's versions; not snapshots/ as well), the tip's ref, its
    # snapshot, each piece holding chunks once (not once per chunk read concurrently),
    # and one GET per chunk object
    assert pieces >= 1
    assert _requests(log) == {"GET": 1 + 1 + 1 + pieces + 16}


def test_local_files_write_whole_files_as_open_does_and_leave_no_temporaries(tmp_path):
    store = zarr.storage.LocalStore(tmp_path / "s")
    files = LocalFiles(store)
    files.put("objects/ab/cdef", b"x" * 100_000)
    files.put("objects/ab/cdeg", memoryview(np.arange(10, dtype="i8")))
    path = tmp_path / "s" / "objects" / "ab" / "cdef"
    assert path.read_bytes() == b"x" * 100_000
    assert (tmp_path / "s/objects/ab/cdeg").read_bytes() == np.arange(10, dtype="i8").tobytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open(path, "wb")
    assert sorted(os.listdir(path.parent)) == ["cdef", "cdeg"]  # no .partial left


def test_local_files_make_a_removed_folder_again_and_copies_name_their_own(tmp_path):
    store = zarr.storage.LocalStore(tmp_path / "s")
    files = LocalFiles(store)
    files.put("objects/ab/one", b"1")
    (tmp_path / "s/objects/ab/one").unlink()
    (tmp_path / "s/objects/ab").rmdir()  # as a delete_dir or a sweep might
    files.put("objects/ab/two", b"2")
    copy = pickle.loads(pickle.dumps(files))
    copy.put("objects/cd/three", b"3")
    assert copy._tag != files._tag  # concurrent copies never share a temporary name
    assert (tmp_path / "s/objects/ab/two").read_bytes() == b"2"
    assert (tmp_path / "s/objects/cd/three").read_bytes() == b"3"


def test_local_files_refuse_a_read_only_store(tmp_path):
    zarr.storage.LocalStore(tmp_path / "s")
    files = LocalFiles(zarr.storage.LocalStore(tmp_path / "s", read_only=True))
    with pytest.raises(ValueError, match="read-only"):
        files.put("objects/ab/x", b"x")
    assert not (tmp_path / "s" / "objects").exists()


def test_a_piece_that_fails_fails_every_concurrent_reader_and_is_read_again_later(tmp_path):
    store = zarr.storage.LocalStore(tmp_path / "ckpt")
    x = np.arange(32 * 32, dtype="i4").reshape(32, 32)
    CheckpointManager(store).save({"x": x}, step=0, encoding={"x": {"chunks": (8, 8)}})
    pieces = sorted((tmp_path / "ckpt" / "pieces").rglob("*"))
    piece = next(p for p in pieces if p.is_file())
    held = piece.read_bytes()
    piece.unlink()
    fresh = CheckpointManager(store)
    restored = fresh.open_store()
    with pytest.raises(CheckpointNotFoundError, match="manifest piece"):
        zarr.open_array(restored, path="x", mode="r")[:]  # 16 chunks read concurrently
    piece.write_bytes(held)
    assert np.array_equal(zarr.open_array(restored, path="x", mode="r")[:], x)


def test_local_files_written_from_many_threads_at_once_are_all_whole(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files = LocalFiles(zarr.storage.LocalStore(tmp_path / "s"))
    keys = [f"objects/{i % 4:02x}/{i:04d}" for i in range(400)]  # four shared folders
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: files.put(k, k.encode() * 50), keys))
    for key in keys:
        assert (tmp_path / "s" / key).read_bytes() == key.encode() * 50
    assert not list((tmp_path / "s").rglob("*.partial"))
