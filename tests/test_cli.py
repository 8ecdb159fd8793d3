"""The swarmstore command: maintenance verbs, JSON output, clear errors, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from swarmstore.cli import main
from swarmstore.storage import ReplicatedStore


@pytest.fixture
def nodes(tmp_path):
    urls = [f"file://{tmp_path}/n{i}" for i in range(3)]
    store = ReplicatedStore(urls, replicas=2, state_dir=tmp_path / "state")
    arr = zarr.create_array(store, shape=(64, 64), chunks=(16, 16), dtype="i4")
    arr[:] = np.arange(64 * 64).reshape(64, 64)
    return urls, tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def node_args(urls, tmp_path):
    return [a for u in urls for a in ("--node", u)] + [
        "--replicas",
        "2",
        "--state-dir",
        str(tmp_path / "s"),
    ]


def test_scrub_repair_status_json(nodes, capsys):
    urls, tmp_path = nodes
    code, out, _ = run(capsys, "scrub", *node_args(urls, tmp_path), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    victim = next((tmp_path / "n0" / "c").rglob("*"))
    while victim.is_dir():
        victim = next(victim.iterdir())
    victim.unlink()
    code, out, _ = run(capsys, "scrub", *node_args(urls, tmp_path), "--json")
    assert code == 1 and len(json.loads(out)["missing"]) == 1
    code, out, _ = run(capsys, "status", *node_args(urls, tmp_path), "--json")
    status = json.loads(out)
    assert code == 1 and status["under_replicated_keys"] == 1 and len(status["nodes"]) == 3
    code, out, _ = run(capsys, "repair", *node_args(urls, tmp_path), "--json")
    assert code == 0 and json.loads(out)["copies_written"] == 1
    code, out, _ = run(capsys, "status", *node_args(urls, tmp_path))
    assert code == 0 and "0 under-replicated" in out


def test_config_file_describes_the_store(nodes, capsys):
    urls, tmp_path = nodes
    cfg = tmp_path / "swarm.yaml"
    cfg.write_text("store:\n  nodes:\n" + "".join(f"    - {u}\n" for u in urls) + "  replicas: 2\n")
    code, out, _ = run(
        capsys, "rebalance", "--config", str(cfg), "--json", "--state-dir", str(tmp_path / "s")
    )
    assert code == 0 and json.loads(out)["complete"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scrub"], "no nodes"),
        (["scrub", "--node", "ftp://x"], "unsupported scheme"),
        (["scrub", "--node", "file:///tmp/a", "--replicas", "3"], "replicas=3"),
        (["scrub", "--config", "/nonexistent.yaml"], "cannot read config file"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(argv, message, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("swarmstore: error:") and message in err


def test_bad_config_values_are_refused(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("store:\n  nodes: [file:///tmp/x]\n  replicas: 1\nstorage:\n  replicas: lots\n")
    code, _, err = run(capsys, "scrub", "--config", str(cfg))
    assert code == 2 and "storage.replicas must be an integer" in err


@pytest.mark.slow
def test_demo_exits_zero_when_every_check_holds(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "swarmstore.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all checks held" in proc.stdout


def test_checkpoint_list_verify_restore_archive_gc(tmp_path, capsys):
    from swarmstore.checkpoint import CheckpointManager

    ckpt = tmp_path / "ckpt"
    mgr = CheckpointManager(zarr.storage.LocalStore(ckpt))
    mgr.save({"w": np.arange(100, dtype="f4")}, step=3, metadata={"loss": 0.5})
    mgr.save({"w": np.arange(100, dtype="f4") * 2}, step=7, metadata={"loss": 0.25})
    code, out, _ = run(capsys, "checkpoint", "list", "--store", str(ckpt), "--json")
    assert code == 0 and [r["step"] for r in json.loads(out)] == [3, 7]
    code, out, _ = run(capsys, "checkpoint", "verify", "--store", str(ckpt), "--json")
    assert code == 0 and set(json.loads(out)) == {"3", "7"}
    code, out, _ = run(
        capsys,
        "checkpoint",
        "restore",
        "--store",
        str(ckpt),
        "--step",
        "3",
        "--to",
        str(tmp_path / "out"),
        "--json",
    )
    assert code == 0
    np.testing.assert_array_equal(
        zarr.open_group(tmp_path / "out", mode="r")["w"][:], np.arange(100)
    )
    code, out, _ = run(
        capsys,
        "checkpoint",
        "archive",
        "--store",
        str(ckpt),
        "--to",
        str(tmp_path / "cold"),
        "--json",
    )
    assert code == 0 and json.loads(out)["step"] == 7
    assert [
        i.step for i in CheckpointManager(zarr.storage.LocalStore(tmp_path / "cold")).list()
    ] == [7]
    code, out, _ = run(capsys, "checkpoint", "gc", "--store", str(ckpt), "--json")
    assert code == 0 and json.loads(out)["kept"] == [3, 7]
    code, _, err = run(
        capsys,
        "checkpoint",
        "restore",
        "--store",
        str(ckpt),
        "--step",
        "99",
        "--to",
        str(tmp_path / "x"),
    )
    assert code == 2 and "99" in err
    code, _, err = run(capsys, "checkpoint", "archive", "--store", str(ckpt))
    assert code == 2 and "--to" in err


def test_status_of_a_running_cluster(tmp_path, capsys):
    from distributed import Client, LocalCluster

    from swarmstore.cache import TieredCachePlugin
    from swarmstore.compute import SwarmPlugin, annotate

    with (
        LocalCluster(
            n_workers=2, processes=False, dashboard_address="127.0.0.1:0", resources={"GPU": 1}
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(SwarmPlugin())
        client.register_plugin(TieredCachePlugin(memory_bytes="16MiB"))
        with annotate(gpu=1):
            assert client.submit(sum, [1, 2], key="gpu-sum").result() == 3
        code, out, _ = run(capsys, "status", "--scheduler", cluster.scheduler_address, "--json")
        figures = json.loads(out)
        assert code == 0 and len(figures["workers"]) == 2
        assert all("cache" in w and "router" in w for w in figures["workers"].values())
        names = {f["name"] for f in figures["scheduler"]}
        assert any("gpu" in n for n in names), names
        code, out, _ = run(capsys, "status", "--scheduler", cluster.scheduler_address)
        assert code == 0 and "workers" in out and "SwarmPlugin" in out
