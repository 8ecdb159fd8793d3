"""How one configuration value is checked against its schema entry and normalised.

The machinery behind :func:`swarmstore.config.value` (types, bounds, enums, formats) and
the walk from a key to its entry. Imports only dask's parsers and :mod:`swarmstore.errors`.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from dask.utils import parse_bytes, parse_timedelta

from swarmstore.errors import ConfigError

__all__ = ["canon", "checked", "child", "is_section", "unknown"]

_INT = re.compile(r"[+-]?\d+")
_BOUNDS = (
    ("minimum", ">=", lambda v, b: v >= b),
    ("exclusiveMinimum", ">", lambda v, b: v > b),
    ("maximum", "<=", lambda v, b: v <= b),
    ("exclusiveMaximum", "<", lambda v, b: v < b),
)


def canon(part: str) -> str:
    return part.replace("_", "-")


def is_section(node: Mapping[str, Any]) -> bool:
    """A section (``storage``) holds keys; every other schema node is one key."""
    return node.get("type") == "object" and "properties" in node


def child(node: Mapping[str, Any], part: str) -> Mapping[str, Any] | None:
    props = node.get("properties")
    if props is not None and canon(part) in props:
        return props[canon(part)]
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def unknown(where: str, part: str, node: Mapping[str, Any]) -> ConfigError:
    known = list(node.get("properties", {}))
    close = difflib.get_close_matches(canon(part), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown configuration key {where!r}{hint}")


# -- checking and normalising one value ---------------------------------------------------


def _types(node: Mapping[str, Any]) -> list[str]:
    wanted = node.get("type")
    if wanted is None:
        return []
    return list(wanted) if isinstance(wanted, list) else [wanted]


def _describe(node: Mapping[str, Any]) -> str:
    """What a value of ``node`` must be, in words: ``an integer >= 1``."""
    fmt = node.get("format")
    if "enum" in node:
        what = "one of " + ", ".join(repr(v) for v in node["enum"])
    elif fmt == "bytes":
        what = "a byte size (an integer or a string like '2GiB')"
    elif fmt == "duration":
        what = "a duration (seconds, or a string like '50ms' or '2s')"
    else:
        words = {"integer": "an integer", "number": "a number", "string": "a string",
                 "boolean": "true or false", "array": "a list", "object": "a mapping"}  # fmt: skip
        what = " or ".join(words.get(t, t) for t in _types(node) if t != "null") or "a value"
    bounds = [f"{op} {node[name]}" for name, op, _ in _BOUNDS if name in node]
    if bounds:
        what += " " + " and ".join(bounds)
    if "null" in _types(node):
        what += ", or null"
    return what


class _Refused(Exception):
    """Internal: the value does not fit; the caller words the error."""


def _as_number(raw: Any, integer: bool) -> int | float:
    if isinstance(raw, bool):
        raise _Refused
    if integer:
        if isinstance(raw, numbers.Integral):
            return int(raw)
        if isinstance(raw, str) and _INT.fullmatch(raw.strip()):
            return int(raw.strip())
        raise _Refused
    if isinstance(raw, numbers.Real):
        out = float(raw) if not isinstance(raw, numbers.Integral) else int(raw)
    elif isinstance(raw, str):
        try:
            out = float(raw.strip())
        except ValueError:
            raise _Refused from None
    else:
        raise _Refused
    if not math.isfinite(out):
        raise _Refused
    return out


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise _Refused


def _as_bytes(raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Refused
    if isinstance(raw, numbers.Integral):
        return int(raw)
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(parse_bytes(raw))
        except (ValueError, TypeError):
            raise _Refused from None
    raise _Refused


def _as_duration(raw: Any) -> float:
    if isinstance(raw, bool):
        raise _Refused
    if isinstance(raw, numbers.Real):
        out = float(raw)
    elif isinstance(raw, str):
        try:
            out = float(parse_timedelta(raw.strip(), default="seconds"))
        except (ValueError, TypeError, KeyError):
            raise _Refused from None
    else:
        raise _Refused
    if not math.isfinite(out):
        raise _Refused
    return out


def _as_typed(where: str, raw: Any, node: Mapping[str, Any]) -> Any:
    names = _types(node)
    # A value of the declared type first, then the strings an environment variable gives.
    if "string" in names and isinstance(raw, str):
        if len(raw) < node.get("minLength", 0):
            raise _Refused
        return raw
    if "array" in names and isinstance(raw, list | tuple):
        return _as_array(where, raw, node)
    if "object" in names and isinstance(raw, Mapping):
        return _as_object(where, raw, node)
    for name in names:
        try:
            if name == "boolean":
                return _as_bool(raw)
            if name in ("integer", "number"):
                return _as_number(raw, integer=name == "integer")
        except _Refused:
            continue
    if not names:
        return raw
    raise _Refused


def _as_array(where: str, raw: list[Any] | tuple[Any, ...], node: Mapping[str, Any]) -> list[Any]:
    if len(raw) < node.get("minItems", 0):
        raise _Refused
    items = node.get("items", {})
    out = [checked(f"{where}[{i}]", v, items) for i, v in enumerate(raw)]
    if node.get("uniqueItems") and len({repr(v) for v in out}) != len(out):
        raise ConfigError(f"{where} must not repeat an item, got {list(raw)!r}")
    return out


def _as_object(where: str, raw: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        sub = child(node, str(k))
        if sub is None:
            raise unknown(f"{where}.{k}", str(k), node)
        out[canon(str(k)) if "properties" in node else str(k)] = checked(f"{where}.{k}", v, sub)
    missing = [k for k in node.get("required", []) if k not in out]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(missing)}, got {dict(raw)!r}")
    return out


def checked(where: str, raw: Any, node: Mapping[str, Any]) -> Any:
    """``raw`` checked against ``node`` and normalised; ConfigError naming ``where``."""
    try:
        if raw is None:
            if "null" in _types(node) or not _types(node):
                return None
            raise _Refused
        fmt = node.get("format")
        if fmt == "bytes":
            out = _as_bytes(raw)
        elif fmt == "duration":
            out = _as_duration(raw)
        else:
            out = _as_typed(where, raw, node)
        if "enum" in node and out not in node["enum"]:
            raise _Refused
        if isinstance(out, int | float) and not isinstance(out, bool):
            if not all(ok(out, node[name]) for name, _, ok in _BOUNDS if name in node):
                raise _Refused
    except _Refused:
        raise ConfigError(f"{where} must be {_describe(node)}, got {raw!r}") from None
    return out
