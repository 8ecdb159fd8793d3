"""The import structure of ``swarmstore/`` (issue 22): no circles, and the rooms' rules.

Read from the source with :mod:`ast`, every ``import`` counts: module level, inside
functions (a lazy import is still a dependency) and under ``TYPE_CHECKING`` (a type is
one too). ``from swarmstore.x import y`` depends on ``swarmstore.x.y`` when that is a
module, else on ``swarmstore.x`` (the package's ``__init__``).

Every rule holds today, so none is marked: a new circle or a forbidden edge fails the suite.
"""

from __future__ import annotations

import ast
import pathlib
from functools import cache

ROOT = pathlib.Path(__file__).parent.parent / "swarmstore"
CAPABILITIES = ("storage", "cache", "compute", "network", "checkpoint")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The swarmstore module ``name`` refers to (a module, else its nearest package)."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: pathlib.Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            mods = modules()
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "swarmstore" or name.startswith("swarmstore."):
                target = _resolve(name)
                if target and target != module:
                    out.add(target)
    return out


@cache
def graph() -> dict[str, frozenset[str]]:
    """module -> the swarmstore modules it imports (directly)."""
    return {m: frozenset(_imported(m, p)) for m, p in modules().items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def _in(m: str, *prefixes: str) -> bool:
    return any(m == f"swarmstore.{p}" or m.startswith(f"swarmstore.{p}.") for p in prefixes)


def _edges(source: tuple[str, ...], target: tuple[str, ...]) -> list[tuple[str, str]]:
    return sorted(
        (m, t) for m, ts in graph().items() if _in(m, *source) for t in ts if _in(t, *target)
    )


def _circle_of(*members: str) -> list[str] | None:
    wanted = {f"swarmstore.{m}" for m in members}
    return next((c for c in _cycles() if wanted <= set(c)), None)


def test_the_graph_sees_the_imports_it_should():
    """The checker itself: known edges are found, lazy and TYPE_CHECKING ones included."""
    g = graph()
    assert "swarmstore.errors" in g["swarmstore.config"]
    assert "swarmstore.storage._replicated" in g["swarmstore.storage"]
    assert "swarmstore._cli._exit" in g["swarmstore._cli._parser"]
    assert "swarmstore.storage" in g["swarmstore._cli._spec"]  # inside a function
    assert len(modules()) > 40


def test_no_import_circles():
    """No module of the package imports itself back, however indirectly (type-only imports
    and imports inside functions count)."""
    assert _cycles() == []


def test_disk_tier_modules_form_no_circle():
    assert _circle_of("cache._diskengine", "cache._diskpublish") is None


def test_demo_modules_form_no_circle():
    assert _circle_of("_demo", "_demo_cluster") is None


def test_metrics_and_plugins_form_no_circle():
    assert _circle_of("metrics", "compute.plugin") is None


def test_router_modules_form_no_circle():
    assert _circle_of("network._router", "network._race") is None


def test_replicated_store_modules_form_no_circle():
    assert _circle_of("storage._replicated", "storage._maintenance") is None


def test_node_modules_form_no_circle():
    assert _circle_of("storage._node", "storage._backends") is None


def test_faulty_modules_form_no_circle():
    assert _circle_of("testing._faulty", "testing._faulty_node") is None


def test_metrics_and_events_import_no_capability():
    assert _edges(("metrics", "_events"), CAPABILITIES) == []


def test_storage_and_cache_never_import_compute():
    assert _edges(("storage", "cache"), ("compute",)) == []


def test_checkpoint_never_imports_storage_or_cache():
    assert _edges(("checkpoint",), ("storage", "cache")) == []


def test_the_library_never_imports_its_test_helpers():
    """``swarmstore.testing`` serves tests; the demo alone runs its moto server, by design."""
    library = [m for m in graph() if not _in(m, "testing", "_demo", "_demo_cluster")]
    bad = [(m, t) for m in library for t in graph()[m] if _in(t, "testing")]
    assert bad == []


def test_every_package_says_what_it_does_and_may_import():
    for name, path in modules().items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc, f"{name} has no docstring"
        assert "import" in doc.lower(), f"{name}'s docstring does not say what it may import"
