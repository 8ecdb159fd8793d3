"""swarmstore configuration: defaults in ``dask.config`` under the ``swarmstore`` namespace.

Importing swarmstore merges ``swarmstore.yaml`` into dask's config as defaults, so users
override any value the usual Dask ways: ``dask.config.set({"swarmstore.storage.replicas": 3})``,
``DASK_SWARMSTORE__STORAGE__REPLICAS=3`` or a YAML file in ``~/.config/dask``.

Every value is read through :func:`value`, which checks it against its entry in
``swarmstore-schema.yaml`` at use and returns it normalised: byte sizes as ``int``
(``"2GiB"`` -> 2147483648), durations as ``float`` seconds (``"50ms"`` -> 0.05), integers as
``int``, booleans as ``bool``. A value that does not fit raises :class:`ConfigError` naming the
key (``swarmstore.storage.replicas``), what it must be, and what it was.

Strict booleans: ``True``/``False``, or the strings ``"true"``/``"false"`` in any case (an
environment variable ``DASK_X=true`` reaches dask's config as the string ``"true"``;
``DASK_X=False`` is already the bool ``False``, and ``dask.config.set({...: "False"})`` means
false too). Every other string (``"no"``, ``"off"``, ``"0"``, ``"disabled"``) and every number
is refused. In YAML files,
YAML's own booleans apply (``no``/``off`` are YAML 1.1 booleans, parsed by the YAML loader).
Integers: ``int`` (never ``bool`` or ``2.7``), or a string of digits as an environment variable
may give. Unknown keys under ``swarmstore`` are refused with the nearest known name.

Imports only dask's config machinery, yaml and :mod:`swarmstore.errors`: every room may import it.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Mapping
from typing import Any

import dask.config
import yaml

from swarmstore._schema import canon, checked, child, is_section, unknown
from swarmstore.errors import ConfigError

__all__ = ["entry", "get", "get_bytes", "get_seconds", "load_file", "schema", "validate", "value"]

_HERE = pathlib.Path(__file__).parent
_DEFAULTS_FILE = _HERE / "swarmstore.yaml"
_SCHEMA_FILE = _HERE / "swarmstore-schema.yaml"
_MISSING = object()


def _load_yaml(path: pathlib.Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return data


_SCHEMA = _load_yaml(_SCHEMA_FILE)
_ROOT = _SCHEMA["properties"]["swarmstore"]


def schema() -> dict[str, Any]:
    """Return (a copy of) the schema of the ``swarmstore`` config tree."""
    return copy.deepcopy(_SCHEMA)


# -- the schema entry of a key ------------------------------------------------------------


def entry(key: str) -> Mapping[str, Any]:
    """The schema entry of ``swarmstore.<key>``; :class:`ConfigError` for an unknown key."""
    node: Mapping[str, Any] = _ROOT
    where = "swarmstore"
    for part in key.split("."):
        where = f"{where}.{part}"
        sub = child(node, part)
        if sub is None:
            raise unknown(where, part, node)
        node = sub
    return node


# -- reading values -----------------------------------------------------------------------


def _raw(key: str) -> Any:
    """The configured value of ``swarmstore.<key>``, else the packaged default, else _MISSING.

    The fallback matters where dask's config was reset after swarmstore was imported
    (``distributed.utils_test`` restores a snapshot taken at its own import, for one).
    """
    value = dask.config.get(f"swarmstore.{key}", default=_MISSING)
    if value is not _MISSING:
        return value
    node: Any = _DEFAULTS.get("swarmstore", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _check_siblings(key: str) -> None:
    """Refuse unknown keys on the path to ``key`` (a typo such as ``storage.replica``)."""
    section: Any = dask.config.config.get("swarmstore")
    node: Mapping[str, Any] = _ROOT
    where = "swarmstore"
    for part in key.split(".")[:-1]:
        if section is None:
            return
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a mapping of settings, got {section!r}")
        _check_keys(where, section, node)
        node = child(node, part) or {}
        where = f"{where}.{part}"
        section = section.get(part, section.get(part.replace("-", "_")))
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a mapping of settings, got {section!r}")
    if isinstance(section, Mapping):
        _check_keys(where, section, node)


def _check_keys(where: str, section: Mapping[str, Any], node: Mapping[str, Any]) -> None:
    props = node.get("properties")
    if props is None:
        return
    for k in section:
        if canon(str(k)) not in props:
            raise unknown(f"{where}.{k}", str(k), node)


_CACHE: dict[tuple[str, type, Any], Any] = {}


def value(key: str, override: Any = None) -> Any:
    """The validated, normalised value of ``swarmstore.<key>``, or of ``override`` if not None.

    ``override`` (a constructor argument, a CLI option) is checked against the same schema
    entry. Byte sizes come back as ``int``, durations as ``float`` seconds, booleans as
    ``bool``. Raises :class:`ConfigError` naming the key for an unknown key or a bad value.

    >>> value("storage.replicas")
    2
    >>> value("cache.memory-bytes", "1KiB")
    1024
    """
    node = entry(key)
    if override is not None:
        where, raw = f"swarmstore.{key} (given as an argument)", override
    else:
        _check_siblings(key)
        where, raw = f"swarmstore.{key}", _raw(key)
        if raw is _MISSING:
            raise ConfigError(f"{where} is not set and has no packaged default")
    try:
        token = (where, type(raw), raw)
        hash(token)
    except TypeError:
        return checked(where, raw, node)
    if token not in _CACHE:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[token] = checked(where, raw, node)
    return _CACHE[token]


def get(key: str, default: Any = None) -> Any:
    """``value(key)`` for a key the schema knows; else the raw dask value, or ``default``.

    Validates and normalises like :func:`value` (kept for existing call sites).
    """
    try:
        entry(key)
    except ConfigError:
        raw = _raw(key)
        return default if raw is _MISSING else raw
    return value(key)


def get_bytes(key: str, override: int | str | None = None) -> int | None:
    """A byte size from config (``"2GiB"`` or an int), or ``override`` if given."""
    out = value(key, override)
    if isinstance(out, str):
        out = checked(f"swarmstore.{key}", out, {"format": "bytes"})
    return out


def get_seconds(key: str, override: float | str | None = None) -> float | None:
    """A duration in seconds from config (``"2s"``, ``"50ms"`` or a number)."""
    out = value(key, override)
    if out is not None and not isinstance(out, float):
        out = checked(f"swarmstore.{key}", out, {"format": "duration"})
    return out


# -- whole trees --------------------------------------------------------------------------


def validate(
    tree: Mapping[str, Any], node: Mapping[str, Any] | None = None, path: str = ""
) -> None:
    """Check ``tree`` (``{"swarmstore": {...}}``) against the schema, every leaf as :func:`value`.

    Unknown keys and values that do not fit raise :class:`ConfigError` naming the key.
    """
    node = _SCHEMA if node is None else node
    for key, val in tree.items():
        where = f"{path}.{key}" if path else str(key)
        sub = child(node, str(key))
        if sub is None:
            raise unknown(where, str(key), node)
        if isinstance(val, Mapping) and is_section(sub):
            validate(val, sub, where)
        elif is_section(sub):
            raise ConfigError(f"{where} must be a mapping of settings, got {val!r}")
        else:
            checked(where, val, sub)


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


_DEFAULTS = _install_defaults()
