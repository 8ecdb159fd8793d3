"""The operator's bad-input and fault corpus (issue 14): every case is one line and its code.

Each case runs ``swarmstore`` in process against real stores (local dirs, a moto S3
server, an S3 endpoint nobody listens on, checkpoints) and checks the exit status
(0 ok, 1 damage, 2 bad input, 3 unreachable), that stderr holds only ``swarmstore: ...``
lines (one ``error:`` line for a failure), and never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import dataclass, field
from typing import Any

import dask.config
import numpy as np
import pytest
import zarr

from swarmstore.cli import main
from swarmstore.storage import ReplicatedStore
from swarmstore.testing import free_port


@dataclass
class World:
    """Where the corpus runs: three local nodes with data, S3 endpoints, checkpoints."""

    tmp: Any
    s3: dict[str, Any]
    dead: dict[str, Any]
    bucket: str
    files: dict[str, str] = field(default_factory=dict)
    snapshot: list[str] = field(default_factory=list)

    def fill(self, text: str) -> str:
        """``$name`` placeholders filled in (twice: ``$local`` holds ``$n0``)."""
        values = {
            "tmp": str(self.tmp),
            "n0": f"file://{self.tmp}/n0",
            "n1": f"file://{self.tmp}/n1",
            "n2": f"file://{self.tmp}/n2",
            "gone": f"file://{self.tmp}/gone",
            "s3opts": json.dumps(self.s3, separators=(",", ":")),
            "deadopts": json.dumps(self.dead, separators=(",", ":")),
            "bucket": self.bucket,
            "state": f"{self.tmp}/state",
            "local": LOCAL,
            "s3": S3,
            "dead": DEAD,
            **self.files,
        }
        once = string.Template(text).substitute(values)
        return string.Template(once).substitute(values)


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_endpoint):
    """One world for the whole corpus: no case changes it (each that could is refused)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp_path = tmp_path_factory.mktemp("corpus")
    urls = [f"file://{tmp_path}/n{i}" for i in range(3)]
    for name in ("n0", "n1", "n2", "d0", "empty"):
        (tmp_path / name).mkdir()
    store = ReplicatedStore(urls, replicas=2, state_dir=tmp_path / "w-state")
    arr = zarr.create_array(store, shape=(32, 32), chunks=(16, 16), dtype="i4")
    arr[:] = np.arange(32 * 32).reshape(32, 32)
    (tmp_path / "afile").write_text("not a dir")
    dead = {
        **s3_endpoint.storage_options(),
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    w = World(tmp_path, s3_endpoint.storage_options(), dead, s3_endpoint.make_bucket())
    w.files["ckpt"] = str(_checkpoints(tmp_path / "ckpt"))
    w.files["empty"] = str(tmp_path / "empty")
    w.snapshot = _files(tmp_path)
    return w


def _files(root):
    return sorted(
        str(p.relative_to(root))
        for name in ("n0", "n1", "n2", "ckpt")
        for p in (root / name).rglob("*")
    )


def _checkpoints(path):
    from swarmstore.checkpoint import CheckpointManager

    mgr = CheckpointManager(zarr.storage.LocalStore(path))
    for step in (1, 2, 3):
        mgr.save({"w": np.full(64, step, dtype="f4")}, step=step, metadata={"loss": 1 / step})
    return path


def _config(world, name, text):
    path = world.tmp / name
    path.write_text(world.fill(text))
    return str(path)


def invoke(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code, err, expected, pattern):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert all(line.startswith("swarmstore: ") for line in lines), err
    assert code == expected, (code, err)
    if expected == 2:
        assert len(lines) == 1 and lines[0].startswith("swarmstore: error: "), err
    if pattern:
        assert re.search(pattern, err), (pattern, err)


LOCAL = "--node $n0 --node $n1 --node $n2 --replicas 2 --state-dir $state"
S3 = "--node s3://$bucket/a --node s3://$bucket/b --replicas 2 --state-dir $state"
DEAD = (
    "--node file://$tmp/d0 --node s3://nobody/x --replicas 1 --state-dir $state --storage-options"
)

# (id, argv, exit code, stderr pattern); argv is split on spaces after filling in.
CASES = [
    # the command line itself
    ("no-command", "", 2, "required"),
    ("unknown-command", "frobnicate", 2, "invalid choice"),
    ("unknown-option", "scrub $local --frob", 2, "unrecognized arguments: --frob"),
    ("replicas-not-int", "scrub $local --replicas abc", 2, "invalid int value: 'abc'"),
    ("replicas-0", "scrub --node $n0 --node $n1 --replicas 0", 2, "--replicas must be .*>= 1"),
    ("replicas-negative", "scrub --node $n0 --replicas -1", 2, "--replicas must be"),
    ("replicas-above-nodes", "scrub --node $n0 --node $n1 --replicas 3", 2, "replicas=3 needs"),
    ("no-nodes", "scrub", 2, "no nodes"),
    ("scheme", "scrub --node ftp://x", 2, "unsupported scheme"),
    ("relative-path", "scrub --node some/dir", 2, "must be absolute"),
    ("s3-without-bucket", "scrub --node s3://", 2, "needs a bucket"),
    ("memory-without-name", "scrub --node memory://", 2, "needs a name"),
    ("duplicate-nodes", "scrub --node $n0 --node $n0 --replicas 1", 2, "unique"),
    ("limit-negative", "rebalance $local --limit -5", 2, "--limit must be a positive"),
    ("limit-zero", "rebalance $local --limit 0", 2, "--limit must be a positive"),
    ("limit-not-int", "rebalance $local --limit lots", 2, "invalid int value"),
    ("state-dir-empty", "scrub --node $n0 --replicas 1 --state-dir=", 2, "--state-dir must be"),
    ("options-list", "scrub $s3 --storage-options [1]", 2, "must be a JSON object"),
    ("options-not-json", "scrub $s3 --storage-options nope", 2, "not valid JSON"),
    ("options-string", 'scrub $s3 --storage-options "x"', 2, "must be a JSON object"),
    ("options-for-files", 'scrub $local --storage-options {"anon":true}', 2, "s3:// nodes"),
    ("options-bad-key", 'status $s3 --storage-options {"nokey":1}', 2, "unknown option"),
    # node roots: missing or wrong, never created
    *[
        (
            f"missing-dir-{cmd}",
            f"{cmd} --node $n0 --node $gone --state-dir $state",
            2,
            "gone does not exist",
        )
        for cmd in ("status", "scrub", "repair", "rebalance")
    ],
    ("root-is-a-file", "scrub --node $n0 --node file://$tmp/afile", 2, "is not a directory"),
    *[
        (
            f"missing-bucket-{cmd}",
            f"{cmd} --node s3://nobucket/n --node s3://$bucket/n "
            "--replicas 1 --state-dir $state --storage-options $s3opts",
            2,
            "bucket 'nobucket' does not exist",
        )
        for cmd in ("status", "scrub", "repair", "rebalance")
    ],
    # cluster status
    ("scheduler-not-an-address", "status --scheduler notaurl", 2, "not a scheduler address"),
    ("scheduler-dashboard", "status --scheduler http://h:8787", 2, "dashboard"),
    ("scheduler-port-text", "status --scheduler tcp://h:port", 2, "not a scheduler address"),
    # config files
    ("config-missing", "scrub --config $tmp/none.yaml", 2, "none.yaml does not exist"),
    ("config-not-yaml", "scrub --config @cfg: [:", 2, "not valid YAML"),
    ("config-a-list", "scrub --config @cfg[1, 2]", 2, "must hold a mapping"),
    (
        "config-replicas-two",
        "scrub --config @cfgstorage: {replicas: two}",
        2,
        r"swarmstore\.storage\.replicas must be an integer",
    ),
    (
        "config-replicas-float",
        "scrub --config @cfgstorage: {replicas: 2.7}",
        2,
        r"storage\.replicas must be an integer",
    ),
    (
        "config-bool-string",
        "scrub --config @cfgstorage: {read-repair: 'no'}",
        2,
        r"storage\.read-repair must be true or false",
    ),
    (
        "config-block-negative",
        "scrub --config @cfgstorage: {verify-block-size: -1}",
        2,
        r"verify-block-size must be",
    ),
    (
        "config-concurrency-0",
        "scrub --config @cfgcheckpoint: {concurrency: 0}",
        2,
        r"checkpoint\.concurrency must be",
    ),
    ("config-disk-negative", "scrub --config @cfgcache: {disk-bytes: -1}", 2, "disk-bytes"),
    (
        "config-pickle-off",
        "scrub --config @cfgreplication: {allow-pickle: 'off'}",
        2,
        "allow-pickle must be true or false",
    ),
    (
        "config-unknown-section",
        "scrub --config @cfgstorag: {replicas: 2}",
        2,
        "did you mean 'storage'",
    ),
    (
        "config-unknown-key",
        "scrub --config @cfgstorage: {replica: 2}",
        2,
        "did you mean 'replicas'",
    ),
    (
        "store-unknown-field",
        "scrub --config @cfgstore: {nodes: ['$n0'], replica: 1}",
        2,
        "unknown field store.replica .*'replicas'",
    ),
    (
        "node-field-typo",
        "scrub --config @cfgstore: {nodes: [{target: '$n0', zonee: a}]}",
        2,
        r"nodes\[0\]: unknown field 'zonee' .*'zone'",
    ),
    (
        "node-weight-word",
        "scrub --config @cfgstore: {nodes: [{target: '$n0', weight: heavy}]}",
        2,
        r"weight must be a positive number, got 'heavy'",
    ),
    (
        "node-weight-negative",
        "scrub --config @cfgstore: {nodes: [{target: '$n0', weight: -1}]}",
        2,
        "weight must be",
    ),
    (
        "node-weight-zero",
        "scrub --config @cfgstore: {nodes: [{target: '$n0', weight: 0}]}",
        2,
        "weight must be",
    ),
    ("node-without-target", "scrub --config @cfgstore: {nodes: [{zone: a}]}", 2, "needs target"),
    (
        "node-zone-list",
        "scrub --config @cfgstore: {nodes: [{target: '$n0', zone: [1]}]}",
        2,
        "zone must be",
    ),
    (
        "store-replicas-two",
        "scrub --config @cfgstore: {nodes: ['$n0'], replicas: two}",
        2,
        r"store\.replicas must be an integer",
    ),
    (
        "store-quorum-0",
        "scrub --config @cfgstore: {nodes: ['$n0'], write_quorum: 0}",
        2,
        r"store\.write_quorum must be",
    ),
    ("store-nodes-string", "scrub --config @cfgstore: {nodes: '$n0'}", 2, "must be a list"),
    ("store-a-list", "scrub --config @cfgstore: [1]", 2, "store must be a mapping"),
    (
        "store-options-list",
        "scrub --config @cfgstore: {nodes: ['$n0'], storage_options: [1]}",
        2,
        "storage_options must be a mapping",
    ),
    (
        "flag-and-file-disagree",
        "scrub --replicas 1 --config @cfgstore: {nodes: ['$n0', '$n1'], replicas: 2}",
        2,
        "--replicas 1 and .* store.replicas: 2 disagree",
    ),
    (
        "nodes-flag-and-file-disagree",
        "scrub --node $n1 --config @cfgstore: {nodes: ['$n0']}",
        2,
        "--node .* disagree",
    ),
    # checkpoints
    ("ckpt-unknown-action", "checkpoint bogus --store $ckpt", 2, "invalid choice"),
    ("ckpt-store-missing", "checkpoint list --store $tmp/nockpt", 2, "nockpt does not exist"),
    ("ckpt-restore-no-to", "checkpoint restore --store $ckpt", 2, "needs --to"),
    ("ckpt-archive-no-to", "checkpoint archive --store $ckpt", 2, "needs --to"),
    ("ckpt-step-99", "checkpoint restore --store $ckpt --step 99 --to $tmp/out", 2, "99"),
    ("ckpt-step-negative", "checkpoint restore --store $ckpt --step -1 --to $tmp/o", 2, ">= 0"),
    ("ckpt-verify-step-99", "checkpoint verify --store $ckpt --step 99", 2, "no checkpoint of"),
    ("ckpt-restore-none", "checkpoint restore --store $empty --to $tmp/o", 2, "no checkpoint"),
    ("ckpt-into-nonempty", "checkpoint restore --store $ckpt --to $n0", 2, "--force"),
    ("ckpt-to-a-file", "checkpoint restore --store $ckpt --to $tmp/afile", 2, "not a directory"),
    ("ckpt-store-and-nodes", "checkpoint list --store $ckpt --node $n0", 2, "give one of them"),
    (
        "ckpt-store-and-config-nodes",
        "checkpoint list --store $ckpt --config @cfgstore: {nodes: ['$n0']}",
        2,
        "give one",
    ),
    (
        "ckpt-config-missing",
        "checkpoint gc --store $ckpt --config $tmp/none.yaml",
        2,
        "does not exist",
    ),
    (
        "ckpt-config-bad-value",
        "checkpoint gc --store $ckpt --config @cfgcheckpoint: {keep-last: 0}",
        2,
        r"keep-last must be",
    ),
    (
        "ckpt-options-local",
        'checkpoint list --store $ckpt --storage-options {"a":1}',
        2,
        "remote URLs",
    ),
    (
        "ckpt-missing-bucket",
        "checkpoint list --store s3://nobucket/c --storage-options $s3opts",
        2,
        "bucket does not exist",
    ),
    # bad values from the environment (dask.config), no flags
    (
        "env-replicas-abc",
        "scrub --node $n0 --node $n1 --state-dir $state",
        2,
        r"swarmstore\.storage\.replicas must be an integer",
    ),
    # honoured options
    ("ok-replicas-reported", "status $local --json", 0, None),
    ("ok-s3-storage-options", "scrub $s3 --json --storage-options $s3opts", 0, None),
    ("ok-version", "--version", 0, None),
    ("ok-help", "scrub --help", 0, None),
    # unreachable S3 node: every maintenance command reports it and exits 3
    *[
        (f"unreachable-{cmd}", f"{cmd} $dead $deadopts --json", 3, "unreachable")
        for cmd in ("status", "scrub", "repair", "rebalance")
    ],
    (
        "unreachable-ckpt-list",
        "checkpoint list --store s3://b/c --storage-options $deadopts",
        3,
        "unreachable",
    ),
    ("unreachable-scheduler", "status --scheduler tcp://127.0.0.1:$port", 3, "cannot reach"),
]

ENV = {"env-replicas-abc": {"swarmstore.storage.replicas": "abc"}}


def _argv(world, text):
    if "@cfg" in text:
        head, body = text.split("@cfg", 1)
        return [*world.fill(head).split(), _config(world, "case.yaml", body)]
    return [a.replace("\0", " ") for a in world.fill(text).split()]


@pytest.mark.parametrize(
    ("argv", "code", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_corpus(world, capsys, request, argv, code, pattern):
    case = request.node.callspec.id
    world.files["port"] = str(free_port())
    settings = {"distributed.comm.timeouts.connect": "2s", **ENV.get(case, {})}
    with dask.config.set(settings):
        got, out, err = invoke(capsys, _argv(world, argv))
    assert_clean(got, err, code, pattern)
    if case == "ok-replicas-reported":
        assert json.loads(out)["replicas"] == 2
    if case.startswith("missing-dir"):
        assert not (world.tmp / "gone").exists()  # never created
    if case.startswith("unreachable-") and "ckpt" not in case and "scheduler" not in case:
        assert err.count("swarmstore: ") == 1, err


def test_corpus_has_at_least_the_69_cases_of_issue_14():
    assert len(CASES) >= 69
    assert len({c[0] for c in CASES}) == len(CASES)


def test_the_corpus_changed_no_node_and_no_checkpoint(world):
    assert _files(world.tmp) == world.snapshot
