"""Deterministic task tokens for durable results: a Merkle hash of each task's code, its
literal arguments and its dependencies' tokens (:func:`graph_tokens`). Changed code or
inputs give a new token; the key's name, which dask often draws at random, never counts.
"""

from __future__ import annotations

import inspect
import types
from functools import partial
from typing import TYPE_CHECKING, Any

import xxhash
from dask.base import tokenize

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dask.typing import Key

__all__ = ["graph_tokens"]


def _code_digest(obj: Any, out: list[bytes], depth: int = 0) -> None:
    """Append the bytecode and constants of a callable (partials, methods, callables)."""
    if depth > 8:
        return
    if isinstance(obj, partial):
        _code_digest(obj.func, out, depth + 1)
        return
    func = getattr(obj, "__func__", obj)
    code = getattr(func, "__code__", None)
    if code is None and not inspect.isroutine(func) and callable(func):
        code = getattr(type(func).__call__, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_bytes(code, out)


def _code_bytes(code: types.CodeType, out: list[bytes]) -> None:
    out.append(code.co_code)
    out.append(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_bytes(const, out)
        else:
            out.append(repr(const).encode())


def _callables(node: Any, out: list[bytes]) -> None:
    func = getattr(node, "func", None)
    if func is not None:
        _code_digest(func, out)
    for arg in (*getattr(node, "args", ()), *getattr(node, "kwargs", {}).values()):
        if hasattr(arg, "func") or hasattr(arg, "args"):
            _callables(arg, out)


def graph_tokens(dsk: Mapping[Key, Any]) -> dict[Key, str]:
    """Deterministic tokens for every task of a low-level graph (``{key: GraphNode}``).

    A token covers the task's kind, its function's identity and bytecode, its literal
    arguments and the tokens of its dependencies (so it is a Merkle hash of everything
    upstream), and never the key name itself, which dask often draws at random.
    """
    from dask._task_spec import TaskRef, convert_legacy_graph

    graph = convert_legacy_graph(dict(dsk))
    tokens: dict[Key, str] = {}
    for root in graph:
        stack = [root]
        while stack:
            key = stack[-1]
            if key in tokens:
                stack.pop()
                continue
            node = graph[key]
            todo = [d for d in node.dependencies if d in graph and d not in tokens]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            subs = {
                d: TaskRef(f"swarm-token-{tokens[d]}") for d in node.dependencies if d in tokens
            }
            code: list[bytes] = []
            _callables(node, code)
            stable = node.substitute(subs, key="swarm") if subs else node.substitute({}, "swarm")
            tokens[key] = tokenize(stable, xxhash.xxh3_128_hexdigest(b"\0".join(code)))
    return tokens
