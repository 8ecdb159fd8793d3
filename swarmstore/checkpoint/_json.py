"""Strict JSON for everything the checkpoint reads back from storage.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e400`` into
``inf``, and raises ``RecursionError`` (not ``ValueError``) on deeply nested input. A
document read from a shared store may have been written by anyone, so every read goes
through :func:`loads`, which refuses all of these with one exception type, bounds the
size and nesting depth, and never lets a bad document escape as anything but
:class:`ManifestError`. :func:`dumps` is the canonical writer (sorted keys, no spaces,
no NaN), so what it writes :func:`loads` reads.
"""

from __future__ import annotations

import json
import math
from typing import Any

from swarmstore.errors import ManifestError

__all__ = ["MAX_DEPTH", "check_plain", "dumps", "loads"]

#: Deepest nesting a stored document may have (metadata included).
MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _depth(doc: Any) -> int:
    """Nesting depth of ``doc``, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads(data: bytes | str, *, where: str, max_bytes: int) -> Any:
    """Parse ``data`` strictly; raise :class:`ManifestError` naming ``where`` if it is bad.

    Refused: more than ``max_bytes``, invalid UTF-8 or JSON, ``NaN``/``Infinity``,
    numbers that overflow a float, and nesting deeper than :data:`MAX_DEPTH`.
    """
    if len(data) > max_bytes:
        raise ManifestError(f"{where} is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        doc = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ManifestError(f"{where} is nested too deeply to be a checkpoint document") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where} is not valid JSON: {e}") from e
    if _depth(doc) > MAX_DEPTH:
        raise ManifestError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    return doc


def dumps(doc: Any) -> bytes:
    """Canonical bytes of ``doc``: sorted keys, no spaces, UTF-8, NaN refused."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def check_plain(doc: Any, what: str) -> None:
    """Refuse user data (checkpoint metadata) that would not read back through :func:`loads`."""
    try:
        data = dumps(doc)
    except RecursionError:
        raise ManifestError(f"{what} is nested too deeply") from None
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{what} must be plain JSON: {e}") from e
    if _depth(json.loads(data)) > MAX_DEPTH - 8:
        raise ManifestError(f"{what} is nested deeper than {MAX_DEPTH - 8} levels")
