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
        if "properties" in v:
            yield from _schema_leaves(v, path)
        else:
            yield path


def test_defaults_and_schema_agree_key_for_key():
    defaults = yaml.safe_load(open(config._DEFAULTS_FILE))
    assert set(_leaves(defaults)) == set(_schema_leaves(config.schema()))
    config.validate(defaults)


def test_every_schema_key_is_described():
    def walk(node, path=""):
        for k, v in node.get("properties", {}).items():
            p = f"{path}.{k}" if path else k
            if "properties" in v:
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
        ({"swarmstore": {"storage": {"replicas": "two"}}}, "storage.replicas must be integer"),
        ({"swarmstore": {"storage": {"nope": 1}}}, "unknown configuration key"),
        ({"swarmstore": {"cache": {"validate": 1}}}, "cache.validate must be boolean"),
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


def test_every_config_key_is_read_by_the_code():
    """A documented key that nothing reads is a setting that silently does nothing."""
    import pathlib

    source = "\n".join(
        p.read_text() for p in pathlib.Path(config.__file__).parent.rglob("*.py")
    )
    unused = [
        path
        for path in _schema_leaves(config.schema())
        if path.rsplit(".", 1)[-1] not in source
    ]
    assert not unused, unused


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
