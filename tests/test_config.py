import dask.config
import pytest
import yaml

from swarmstore import config
from swarmstore.errors import ConfigError


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k != "qos-shares":
            yield from _leaves(v, path)
        else:
            yield path


def _schema_leaves(node, prefix=""):
    for k, v in node.get("properties", {}).items():
        path = f"{prefix}.{k}" if prefix else k
        if v.get("type") == "object" and "properties" in v:
            yield from _schema_leaves(v, path)
        else:
            yield path


def test_defaults_and_schema_agree_key_for_key():
    defaults = yaml.safe_load(config._DEFAULTS_FILE.read_text())
    assert set(_leaves(defaults)) == set(_schema_leaves(config.schema()))
    config.validate(defaults)


def test_every_schema_key_is_described():
    def walk(node, path=""):
        for k, v in node.get("properties", {}).items():
            p = f"{path}.{k}" if path else k
            if v.get("type") == "object" and "properties" in v:
                walk(v, p)
            else:
                assert v.get("description"), f"{p} has no description"

    walk(config.schema())


def test_defaults_are_in_dask_config():
    assert dask.config.get("swarmstore.storage.replicas") == 2


def test_dask_config_set_overrides():
    with dask.config.set({"swarmstore.storage.replicas": 3}):
        assert config.get("storage.replicas") == 3
    assert config.get("storage.replicas") == 2


def test_env_variable_overrides(monkeypatch):
    monkeypatch.setenv("DASK_SWARMSTORE__STORAGE__REPLICAS", "5")
    refreshed = dask.config.collect_env()
    assert refreshed["swarmstore"]["storage"]["replicas"] == 5


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        ({"swarmstore": {"storage": {"replicas": "two"}}}, "storage.replicas must be an integer"),
        ({"swarmstore": {"storage": {"nope": 1}}}, "unknown configuration key"),
        ({"swarmstore": {"cache": {"validate": 1}}}, "cache.validate must be true or false"),
    ],
)
def test_validate_refuses_bad_config(tree, match):
    with pytest.raises(ConfigError, match=match):
        config.validate(tree)


def test_load_file_validates_and_merges(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("storage:\n  replicas: 4\n")
    try:
        config.load_file(good)
        assert config.get("storage.replicas") == 4
    finally:
        dask.config.set({"swarmstore.storage.replicas": 2})  # restore for the session
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  replicas: [1, 2]\n")
    with pytest.raises(ConfigError):
        config.load_file(bad)


def test_byte_and_duration_helpers():
    assert config.get_bytes("cache.memory-bytes") == 512 * 2**20
    assert config.get_seconds("replication.interval") == 2.0
    with pytest.raises(ConfigError):
        config.get_bytes("cache.memory-bytes", "lots")


def test_errors_inherit_builtins():
    from swarmstore import errors

    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.NodeUnavailable, ConnectionError)
    assert issubclass(errors.ReplicaUnavailable, OSError)
    e = errors.ReplicaUnavailable("a/c/0", {"n0": "checksum mismatch"})
    assert "a/c/0" in str(e) and "n0" in str(e)


def _readers(tmp_path):
    """What reads each key: set the key to a value no schema type accepts, call the reader."""
    from zarr.storage import MemoryStore

    from swarmstore import _events
    from swarmstore.cache import DiskTier, PeerTier, TieredStore
    from swarmstore.cache._coherence import Watermarks
    from swarmstore.cache._peerserve import PeerServer
    from swarmstore.cache._plugin import peers_wanted
    from swarmstore.checkpoint import CheckpointManager
    from swarmstore.compute import SwarmPlugin
    from swarmstore.compute.durable import ResultStore, _as_result_store
    from swarmstore.compute.inventory import detect
    from swarmstore.compute.replication import ReplicationController
    from swarmstore.metrics._core import _Heartbeat
    from swarmstore.network import TransferRouter
    from swarmstore.network._qos import current_qos, qos_classes
    from swarmstore.network._s3 import s3_config_kwargs
    from swarmstore.storage import ReplicatedStore, node_from

    def events():
        _events._warned.clear()
        _events.emit("config-probe")

    return {
        "storage": lambda: ReplicatedStore(["memory://cfg-a", "memory://cfg-b"]),
        "storage.object-client": lambda: node_from("s3://cfg-bucket/x"),
        "storage.coding-heap-pad": lambda: _heap_pad(),
        "cache": lambda: TieredStore(MemoryStore(), disk=False),
        "cache.disk-dir": lambda: TieredStore(MemoryStore()),
        "cache.disk-bytes": lambda: DiskTier(tmp_path / "d"),
        "cache.disk-fsync": lambda: DiskTier(tmp_path / "d"),
        "cache.disk-pending-bytes": lambda: DiskTier(tmp_path / "d"),
        "cache.disk-claim-timeout": lambda: DiskTier(tmp_path / "d"),
        "cache.peers": lambda: peers_wanted(None),
        "cache.peer-serve-concurrency": lambda: PeerServer([], Watermarks()),
        "cache.peer-serve-queue": lambda: PeerServer([], Watermarks()),
        "cache.peer-summary-bits": lambda: PeerServer([], Watermarks()),
        "cache.peer-timeout": lambda: PeerTier(None),
        "cache.peer-quarantine": lambda: PeerTier(None),
        "cache.peer-directory-interval": lambda: PeerTier(None),
        "compute": lambda: SwarmPlugin(),
        "compute.detect-gpus": lambda: detect(),
        "replication": lambda: ReplicationController(None),
        "replication.allow-pickle": lambda: ResultStore(MemoryStore()),
        "replication.result-store": lambda: _as_result_store(None, None),
        "network": lambda: TransferRouter(),
        "network.qos-classes": qos_classes,
        "network.s3-connect-timeout": s3_config_kwargs,
        "network.s3-read-timeout": s3_config_kwargs,
        "network.qos-default": current_qos,
        "checkpoint": lambda: CheckpointManager(MemoryStore()),
        "metrics.events": events,
        "metrics.event-rate": events,
        "metrics.interval": lambda: _Heartbeat(),
    }


#: keys no component reads yet (or whose reader fails first), with the room that owns them
NOT_READ_YET: dict[str, str] = {}


def _keys():
    return [
        pytest.param(
            p,
            marks=[pytest.mark.xfail(strict=True, reason=NOT_READ_YET[p])]
            if p in NOT_READ_YET
            else [],
        )
        for p in sorted(_schema_leaves(config.schema()))
    ]


def _heap_pad() -> None:
    """What the first codec of a process runs (``storage._heap.keep_pad``)."""
    from swarmstore.storage import _heap

    _heap._done = False
    _heap.keep_pad()


@pytest.mark.parametrize("path", _keys())
def test_every_config_key_is_read_by_the_code(path, tmp_path, caplog):
    """A documented key that nothing reads is a setting that silently does nothing.

    Each key is set to a value no schema type accepts; the component that reads it must
    then refuse, naming the key (events, which never raise, log it instead).
    """
    key = path.removeprefix("swarmstore.")
    readers = _readers(tmp_path)
    reader = readers.get(key) or readers.get(key.split(".")[0])
    assert reader is not None, f"{key}: add the component that reads it to _readers()"
    with dask.config.set({path: object()}), caplog.at_level("WARNING"):
        try:
            reader()
        except ConfigError as e:
            assert path in str(e), (path, str(e))
        else:
            assert any(path in r.getMessage() for r in caplog.records), f"{path} is not read"


def test_get_falls_back_to_packaged_defaults_when_dask_config_was_reset():
    saved = dask.config.config.pop("swarmstore")
    try:
        assert config.get("storage.replicas") == 2
        assert config.get("replication.default-replicas") == 2
        assert config.get("storage.nope", "fallback") == "fallback"
    finally:
        dask.config.config["swarmstore"] = saved


def test_readme_configuration_table_lists_every_key():
    import pathlib

    readme = (pathlib.Path(config.__file__).parent.parent / "README.md").read_text()
    for path in _schema_leaves(config.schema()):
        assert f"| `{path.removeprefix('swarmstore.')}` |" in readme, path


# -- config.value: validated, normalised values ------------------------------------------


def test_value_normalises_sizes_durations_and_types():
    assert config.value("storage.replicas") == 2
    assert config.value("cache.memory-bytes") == 512 * 2**20
    assert config.value("storage.verify-block-size") == 2**20
    assert config.value("replication.interval") == 2.0
    assert config.value("compute.unsatisfiable-timeout") == 30.0
    assert config.value("network.explore-interval") == 30.0
    assert config.value("checkpoint.lease") == 45.0
    assert config.value("cache.ttl") is None
    assert config.value("storage.read-repair") is True
    assert config.value("network.qos-classes") == ["interactive", "normal", "bulk"]
    assert config.value("cache.memory-bytes", "2GiB") == 2 * 2**30
    assert config.value("network.circuit-reset", "50ms") == pytest.approx(0.05)
    assert config.value("network.circuit-reset", 3) == 3.0


def test_every_key_has_a_valid_default():
    for path in _schema_leaves(config.schema()):
        config.value(path.removeprefix("swarmstore."))


def test_get_validates_and_normalises_too():
    assert config.get("cache.disk-bytes") == 10 * 2**30
    with dask.config.set({"swarmstore.storage.replicas": "abc"}):
        with pytest.raises(ConfigError, match=r"swarmstore\.storage\.replicas"):
            config.get("storage.replicas")
    with dask.config.set({"swarmstore.cache.validate": "no"}):
        with pytest.raises(ConfigError, match=r"swarmstore\.cache\.validate"):
            config.get("cache.validate")


BAD = [
    ("storage.replicas", "abc"),
    ("storage.replicas", 2.7),
    ("storage.replicas", True),
    ("storage.replicas", 0),
    ("storage.replicas", -1),
    ("storage.replicas", [2]),
    ("storage.write-quorum", 0),
    ("storage.verify-block-size", -1),
    ("storage.verify-block-size", 0),
    ("storage.verify-block-size", "lots"),
    ("storage.verify-block-size", True),
    ("storage.state-dir", 42),
    ("storage.state-dir", ""),
    ("storage.read-repair", "no"),
    ("storage.read-repair", "off"),
    ("storage.read-repair", "disabled"),
    ("storage.read-repair", "yes"),
    ("storage.read-repair", 0),
    ("storage.read-repair", 1),
    ("cache.disk-fsync", "off"),
    ("cache.disk-bytes", -1),
    ("cache.disk-bytes", "-1GiB"),
    ("cache.memory-bytes", -5),
    ("cache.memory-admission-fraction", 1.5),
    ("cache.ttl", -1),
    ("cache.ttl", "soon"),
    ("compute.gpu-prefetch", float("nan")),
    ("compute.unsatisfiable-timeout", 0),
    ("replication.allow-pickle", "no"),
    ("replication.allow-pickle", "off"),
    ("replication.allow-pickle", "disabled"),
    ("replication.allow-pickle", 0),
    ("replication.default-replicas", 0),
    ("replication.interval", "0s"),
    ("network.hedge-quantile", 1),
    ("network.hedge-budget", -0.1),
    ("network.circuit-failures", 0),
    ("network.concurrency", -1),
    ("network.qos-classes", []),
    ("network.qos-classes", ["a", "a"]),
    ("network.qos-classes", [1]),
    ("network.qos-shares", {"bulk": 1.5}),
    ("network.qos-shares", {"bulk": "half"}),
    ("network.topology-slack", 0.5),
    ("checkpoint.concurrency", 0),
    ("checkpoint.keep-last", 0),
    ("checkpoint.keep-best", {"metric": "loss", "mode": "median"}),
    ("checkpoint.keep-best", {"metric": "loss", "n": 0}),
    ("checkpoint.keep-best", {"n": 2}),
    ("checkpoint.keep-best", {"metric": "loss", "nn": 2}),
    ("checkpoint.lease", -5),
    ("metrics.event-rate", -1),
]


@pytest.mark.parametrize(("key", "bad"), BAD)
def test_bad_values_are_refused_naming_the_key(key, bad):
    with dask.config.set({f"swarmstore.{key}": bad}):
        with pytest.raises(ConfigError, match=rf"swarmstore\.{key}\b"):
            config.value(key)
    with pytest.raises(ConfigError, match=rf"swarmstore\.{key} \(given as an argument\)"):
        config.value(key, bad)


def test_refusal_says_what_the_value_must_be():
    with pytest.raises(ConfigError) as info:
        config.value("storage.replicas", "abc")
    assert str(info.value) == (
        "swarmstore.storage.replicas (given as an argument) must be an integer >= 1, got 'abc'"
    )
    with pytest.raises(ConfigError, match=r"must be true or false, got 'no'"):
        config.value("storage.read-repair", "no")


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("storage.read-repair", "true", True),
        ("storage.read-repair", "FALSE", False),
        ("storage.read-repair", "False", False),  # dask.config.set with a string: still false
        ("storage.read-repair", False, False),
        ("storage.replicas", "3", 3),
        ("storage.replicas", 3, 3),
        ("cache.disk-bytes", "1 MiB", 2**20),
        ("cache.disk-bytes", 1e9, 10**9),
        ("cache.ttl", "50ms", 0.05),
        ("network.hedge-budget", "0.5", 0.5),
        ("checkpoint.keep-best", "loss", "loss"),
        ("checkpoint.keep-best", {"metric": "acc", "n": 2, "mode": "max"}, None),
    ],
)
def test_accepted_spellings(key, raw, expected):
    with dask.config.set({f"swarmstore.{key}": raw}):
        got = config.value(key)
    assert got == (raw if expected is None else expected)
    assert type(got) is type(raw if expected is None else expected)


@pytest.mark.parametrize(
    ("env", "key", "expected"),
    [
        ("true", "storage.read-repair", True),
        ("True", "storage.read-repair", True),
        ("false", "replication.allow-pickle", False),
        ("False", "replication.allow-pickle", False),
        ("3", "storage.replicas", 3),
        ("2GiB", "cache.disk-bytes", 2 * 2**30),
        ("50ms", "network.circuit-reset", 0.05),
    ],
)
def test_environment_spellings_are_accepted(env, key, expected):
    raw = _from_env(key, env)
    with dask.config.set({f"swarmstore.{key}": raw}):
        assert config.value(key) == expected


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ("no", "replication.allow-pickle"),
        ("off", "replication.allow-pickle"),
        ("disabled", "replication.allow-pickle"),
        ("0", "replication.allow-pickle"),
        ("1", "storage.read-repair"),
        ("abc", "storage.replicas"),
        ("2.7", "storage.replicas"),
        ("-1", "cache.disk-bytes"),
        ("42", "storage.state-dir"),
    ],
)
def test_environment_spellings_are_refused(env, key):
    raw = _from_env(key, env)
    with dask.config.set({f"swarmstore.{key}": raw}):
        with pytest.raises(ConfigError, match=rf"swarmstore\.{key}\b"):
            config.value(key)


def _from_env(key, text):
    """What dask's own environment parser makes of DASK_SWARMSTORE__<KEY>=text."""
    name = "DASK_SWARMSTORE__" + key.upper().replace(".", "__").replace("-", "_")
    node = dask.config.collect_env({name: text})["swarmstore"]
    for part in key.split("."):
        node = node[part.replace("-", "_")]
    return node


def test_unknown_keys_are_refused_with_the_nearest_name():
    with pytest.raises(ConfigError, match="did you mean 'replicas'"):
        config.value("storage.replica")
    with dask.config.set({"swarmstore.storage.replica": 3}):
        with pytest.raises(ConfigError, match=r"swarmstore\.storage\.replica\b.*'replicas'"):
            config.value("storage.replicas")
    with dask.config.set({"swarmstore.storgae.replicas": 3}):
        with pytest.raises(ConfigError, match="did you mean 'storage'"):
            config.value("storage.replicas")


def test_underscore_spelling_of_a_key_is_the_same_key():
    with dask.config.set({"swarmstore.storage.read_repair": False}):
        assert config.value("storage.read-repair") is False


def test_validate_checks_bounds_and_formats_of_whole_trees():
    config.validate({"swarmstore": {"storage": {"replicas": 3, "verify-block-size": "64KiB"}}})
    with pytest.raises(ConfigError, match=r"swarmstore\.storage\.verify-block-size"):
        config.validate({"swarmstore": {"storage": {"verify-block-size": -4096}}})
    with pytest.raises(ConfigError, match=r"swarmstore\.checkpoint\.concurrency"):
        config.validate({"swarmstore": {"checkpoint": {"concurrency": 0}}})
    with pytest.raises(ConfigError, match=r"swarmstore\.storage must be a mapping"):
        config.validate({"swarmstore": {"storage": 3}})


def test_a_bad_value_is_refused_at_every_use_not_only_the_first():
    with dask.config.set({"swarmstore.storage.replicas": "abc"}):
        for _ in range(2):
            with pytest.raises(ConfigError):
                config.value("storage.replicas")
    assert config.value("storage.replicas") == 2
