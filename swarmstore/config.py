"""swarmstore configuration: defaults in ``dask.config`` under the ``swarmstore`` namespace.

Importing swarmstore merges ``swarmstore.yaml`` into dask's config as defaults, so users
override any value the usual Dask ways: ``dask.config.set({"swarmstore.storage.replicas": 3})``,
``DASK_SWARMSTORE__STORAGE__REPLICAS=3`` or a YAML file in ``~/.config/dask``. ``validate``
checks a config tree against ``swarmstore-schema.yaml`` and raises :class:`ConfigError`.
"""

from __future__ import annotations

import pathlib
from typing import Any

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

from swarmstore.errors import ConfigError

__all__ = ["get", "get_bytes", "get_seconds", "load_file", "schema", "validate"]

_HERE = pathlib.Path(__file__).parent
_DEFAULTS_FILE = _HERE / "swarmstore.yaml"
_SCHEMA_FILE = _HERE / "swarmstore-schema.yaml"

_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def _load_yaml(path: pathlib.Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return data


def schema() -> dict[str, Any]:
    """Return the schema of the ``swarmstore`` config tree."""
    return _load_yaml(_SCHEMA_FILE)


def validate(tree: dict[str, Any], node: dict[str, Any] | None = None, path: str = "") -> None:
    """Check ``tree`` (``{"swarmstore": {...}}``) against the schema.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
    """
    node = schema() if node is None else node
    props = node.get("properties")
    extra = node.get("additionalProperties")
    for key, value in tree.items():
        where = f"{path}.{key}" if path else key
        sub = props.get(key) if props is not None else None
        if sub is None and extra is not None:
            sub = extra
        if sub is None:
            raise ConfigError(f"unknown configuration key {where!r}")
        _check_type(where, value, sub)
        if isinstance(value, dict) and ("properties" in sub or "additionalProperties" in sub):
            validate(value, sub, where)


def _check_type(where: str, value: Any, sub: dict[str, Any]) -> None:
    wanted = sub.get("type")
    if wanted is None:
        return
    names = wanted if isinstance(wanted, list) else [wanted]
    for name in names:
        types = _TYPES[name]
        if isinstance(value, types) and not (name in ("integer", "number") and value is True):
            return
    raise ConfigError(f"{where} must be {' or '.join(names)}, got {value!r}")


def _install_defaults() -> dict[str, Any]:
    defaults = _load_yaml(_DEFAULTS_FILE)
    validate(defaults)
    dask.config.update_defaults(defaults)
    return defaults


def load_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Validate a user YAML file and merge it into dask.config (it wins over defaults)."""
    data = _load_yaml(pathlib.Path(path))
    if "swarmstore" not in data:
        data = {"swarmstore": data}
    validate(data)
    dask.config.update(dask.config.config, data, priority="new")
    return data


_MISSING = object()


def get(key: str, default: Any = None) -> Any:
    """``dask.config.get("swarmstore." + key)``, falling back to the packaged default.

    The fallback matters where dask's config was reset after swarmstore was imported
    (``distributed.utils_test`` restores a snapshot taken at its own import, for one).
    """
    value = dask.config.get(f"swarmstore.{key}", default=_MISSING)
    if value is not _MISSING:
        return value
    node: Any = _DEFAULTS.get("swarmstore", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def get_bytes(key: str, override: int | str | None = None) -> int | None:
    """A byte size from config (``"2GiB"`` or an int), or ``override`` if given."""
    value = get(key) if override is None else override
    if value is None:
        return None
    try:
        return int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"swarmstore.{key}: {value!r} is not a byte size") from e


def get_seconds(key: str, override: float | str | None = None) -> float | None:
    """A duration in seconds from config (``"2s"``, ``"50ms"`` or a number)."""
    value = get(key) if override is None else override
    if value is None:
        return None
    try:
        return float(parse_timedelta(value, default="seconds"))
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"swarmstore.{key}: {value!r} is not a duration") from e


_DEFAULTS = _install_defaults()
