"""``swarmstore export``: a coded node set (coding from the --config file) into a plain
store that plain zarr reads; one-line errors with the documented exit codes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from swarmstore.cli import main
from swarmstore.storage import ReplicatedStore


@pytest.fixture
def coded(tmp_path):
    urls = [f"file://{tmp_path}/n{i}" for i in range(6)]
    store = ReplicatedStore(urls, coding={"a/": (4, 2)}, state_dir=tmp_path / "state", create=True)
    arr = zarr.create_array(store, name="a", shape=(40,), chunks=(8,), dtype="i4")
    arr[:] = np.arange(40)
    store.flush_sync()  # the writes' shadows are dropped
    cfg = tmp_path / "swarm.yaml"
    cfg.write_text(
        "store:\n  nodes:\n"
        + "".join(f"    - {u}\n" for u in urls)
        + f"  state_dir: {tmp_path / 's'}\n"
        + "storage:\n  coding:\n    a/: 4+2\n"
    )
    return tmp_path, cfg


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_what_plain_zarr_reads(coded, capsys):
    tmp_path, cfg = coded
    to = tmp_path / "plain"
    code, out, _ = run(capsys, "export", "--config", str(cfg), "--to", str(to), "--json")
    assert code == 0 and json.loads(out)["keys"] == 7
    np.testing.assert_array_equal(zarr.open_array(LocalStore(to), path="a")[:], np.arange(40))
    code, _, err = run(capsys, "export", "--config", str(cfg), "--to", str(to))
    assert code == 2 and err.count("\n") == 1 and "already holds data" in err


def test_export_of_a_key_with_more_than_m_bad_fragments_exits_1(coded, capsys):
    tmp_path, cfg = coded
    for i in range(3):  # three of the six nodes lose chunk a/c/0's fragment
        os.unlink(tmp_path / f"n{i}" / "a" / "c" / "0")
    code, _, err = run(capsys, "export", "--config", str(cfg), "--to", str(tmp_path / "p"))
    assert code == 1 and err.count("\n") == 1
    assert "'a/c/0'" in err and "RS(4,2)" in err and "damage found" in err
