"""Sessions are zarr stores (issue 18): plain zarr and xarray write regions into them and
only the touched chunks are encoded and hashed; full saves skip unchanged numpy chunks;
every read is verified, ranged reads included; restores read on zarr's sync path."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from swarmstore.checkpoint import CheckpointManager
from swarmstore.checkpoint._manifest import object_key
from swarmstore.errors import ChecksumMismatch

CHUNK_BYTES = 8 * 4 * 4  # a (4, 4) float64 chunk, uncompressed
RAW = {"compressors": None, "filters": None}


def test_a_region_write_hashes_only_the_chunks_it_touches(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    mgr.save({"x": np.zeros((16, 16))}, encoding={"x": {"chunks": (4, 4), **RAW}})
    with mgr.session() as s:
        zarr.open_array(s.store, path="x", mode="r+")[4:8, 0:8] = 1  # two whole chunks
        assert s.store.hashed_bytes == 2 * CHUNK_BYTES
        assert s.store.written_objects == 1  # the two equal chunks are one object
        s.commit()
    x = mgr.restore()["x"][:]
    assert x.sum() == 32 and x[4:8, 0:8].min() == 1


def test_xarray_to_zarr_region_writes_into_a_session(tmp_path):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"t": (("time", "x"), np.zeros((8, 6)))}, coords={"x": np.arange(6)})
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path / "ckpt"))
    with mgr.session() as s:
        ds.chunk({"time": 2}).to_zarr(s.store, zarr_format=3, consolidated=False)
        s.commit(metadata={"what": "init"})
    with mgr.session() as s:
        part = xr.Dataset({"t": (("time", "x"), np.ones((2, 6)))})
        part.to_zarr(s.store, region={"time": slice(2, 4), "x": slice(0, 6)}, consolidated=False)
        assert list(s.store.changes) == ["t/c/1/0"]  # one (2, 6) chunk, encoded and hashed
        assert s.store.hashed_bytes == s.store.changes["t/c/1/0"][1]
        s.commit(metadata={"what": "region"})
    back = xr.open_zarr(mgr.open_store(), consolidated=False).load()
    assert float(back["t"].sum()) == 12 and float(back["t"][2:4].min()) == 1
    assert mgr.diff(0, 1).changed == ["t/c/1/0"]


def test_a_full_save_does_not_re_encode_unchanged_numpy_chunks(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    x = np.random.default_rng(0).random((64, 64))
    first = mgr.save({"x": x}, encoding={"x": {"chunks": (8, 8)}})
    x[0, 0] = -1
    again = mgr.save({"x": x}, encoding={"x": {"chunks": (8, 8)}})
    assert first.written_objects == 64 and again.written_objects == 1
    assert again.reused_objects == 0  # the 63 others were not even encoded
    assert first.manifest_bytes > 0 and again.manifest_bytes > 0
    np.testing.assert_array_equal(mgr.restore()["x"][:], x)
    fresh = CheckpointManager(zarr.storage.LocalStore(tmp_path))  # no fingerprints: encodes
    third = fresh.save({"x": x}, encoding={"x": {"chunks": (8, 8)}})
    assert third.written_objects == 0 and third.reused_objects == 64


def test_a_lost_object_is_re_encoded_even_when_its_fingerprint_matches(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    x = np.arange(64.0).reshape(8, 8)
    mgr.save({"x": x}, encoding={"x": {"chunks": (4, 4)}})
    lost = mgr.manifest(0).entries["x/c/1/1"][0]
    (tmp_path / object_key(lost)).unlink()
    info = mgr.save({"x": x}, encoding={"x": {"chunks": (4, 4)}})
    assert info.written_objects == 1
    assert mgr.verify_report().ok


def test_ranged_reads_of_a_sharded_checkpoint_are_verified(tmp_path):
    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    enc = {"x": {"chunks": (4,), "shards": (16,), **RAW}}
    mgr.save({"x": np.arange(32.0)}, encoding=enc)
    arr = mgr.restore()["x"]
    assert arr[5] == 5.0  # an inner chunk: a ranged read of the shard
    shard = mgr.manifest(0).entries["x/c/1"][0]
    path = tmp_path / object_key(shard)
    raw = bytearray(path.read_bytes())
    raw[8] ^= 0xFF  # inside the first inner chunk of the second shard
    path.write_bytes(bytes(raw))
    arr = CheckpointManager(zarr.storage.LocalStore(tmp_path)).restore()["x"]
    with pytest.raises(ChecksumMismatch):
        arr[17]
    assert arr[3] == 3.0  # the intact shard still reads


def test_restores_read_on_zarrs_sync_path(tmp_path, monkeypatch):
    from zarr.abc.store import _store_supports_sync_io

    from swarmstore.checkpoint import ManifestStore

    mgr = CheckpointManager(zarr.storage.LocalStore(tmp_path))
    mgr.save({"x": np.arange(100.0)}, encoding={"x": {"chunks": (10,)}})
    store = mgr.open_store()
    assert _store_supports_sync_io(store)
    assert not _store_supports_sync_io(
        ManifestStore(zarr.storage.FsspecStore.from_url("memory://a"))
    )
    with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline"}):
        arr = zarr.open_array(store, path="x", mode="r")

        async def no_async(*args, **kwargs):
            raise AssertionError("the chunks were read on the async path")

        monkeypatch.setattr(ManifestStore, "get", no_async)
        np.testing.assert_array_equal(arr[:], np.arange(100.0))
        monkeypatch.undo()
    digest = mgr.manifest(0).entries["x/c/3"][0]
    (tmp_path / object_key(digest)).write_bytes(b"garbage")
    with pytest.raises(ChecksumMismatch):
        CheckpointManager(zarr.storage.LocalStore(tmp_path)).open_store().get_sync("x/c/3")
