"""pytest plugin: zarr's own store-parametrised tests, over swarmstore's stores too.

Loaded into zarr's test run (``-p peer_harness -p peer_zarr``, zarr's ``tests/`` from its
sdist). zarr parametrises stores by name: ``@pytest.mark.parametrize("store", ["local",
"memory", ...], indirect=True)`` feeds ``request.param`` to the ``store`` fixture of its
``conftest.py``, which builds the stock store. This plugin

- adds every swarmstore mode (``swarm_stores.MODES``) to each such parametrisation that
  names "memory" or "local"; parametrises ``test_indexing.py``'s own (unparametrised)
  ``store`` fixture with "memory" plus the modes, and ``memory_store`` / ``local_store``
  with their stock store plus the modes (``sync_store``, whose fixture carries its own
  params, is left to zarr: 9 tests in ``test_api.py``);
- builds the swarmstore store when the ``store`` fixture is asked for a mode (the stock
  fixture is not run then), opened as zarr's fixture opens its stores and, like those,
  never closed by the fixture;
- keeps only the tests whose store is "memory", "local" or a mode, and pairs each mode's
  test with the stock test of the same parameters on the mode's base store ("memory" or
  "local", else the other one of the two);
- applies the sampling of ``PEER_SAMPLE`` / ``PEER_MODES`` (see :func:`_sample`) and the
  known failures (``peer_known``).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
from peer_harness import BASE, MODE, mark_known, rotation, sampling, spread
from peer_known import known_for, not_applicable
from swarm_stores import MODES, build

if TYPE_CHECKING:
    from _pytest.fixtures import FixtureDef, SubRequest


STOCK = ("memory", "local")
_INDEXING = "test_indexing.py"


def _extended(values: list[Any]) -> list[Any] | None:
    """The parameter list with the modes added, or None when it has no memory/local store.

    The stock store a list lacks of the two is added too, so that every mode is compared
    with its own base ("memory" or "local"): a test written for one of them may assert
    what only that one does (zarr's ``LocalStore`` lists ``"/"`` as the root)."""
    if not any(v in STOCK for v in values):
        return None
    return [*values, *(s for s in STOCK if s not in values), *MODES]


#: zarr's fixtures of one stock store that take no parameter: each runs with its own store
#: and, parametrised here, with every mode
_PLAIN = {"memory_store": "memory", "local_store": "local"}
#: the store fixtures this plugin builds modes for
_FIXTURES = ("store", *_PLAIN)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "store" in names:
        _extend_store(metafunc)
    for name, stock in _PLAIN.items():
        if name in names:
            metafunc.parametrize(name, [stock, *MODES], indirect=True)


def _extend_store(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    marks = definition.own_markers
    for i, mark in enumerate(marks):
        if mark.name != "parametrize" or mark.args[0] not in ("store", ("store",)):
            continue
        values = _extended(list(mark.args[1]))
        if values is not None:
            marks[i] = pytest.mark.parametrize(mark.args[0], values, **mark.kwargs).mark
        return
    if definition.path.name == _INDEXING:  # its module's own unparametrised fixture
        metafunc.parametrize("store", ["memory", *MODES], indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: FixtureDef[Any], request: SubRequest) -> Any:
    """Build the swarmstore store for a store fixture asked for a mode."""
    mode = getattr(request, "param", None)
    if fixturedef.argname not in _FIXTURES or mode not in MODES:
        return None
    key = fixturedef.cache_key(request)
    try:
        from zarr.core.sync import sync
        from zarr.storage import StorePath

        store = build(mode, request.getfixturevalue("tmp_path"))
        sync(store._open())
        value = StorePath(store) if fixturedef.baseid.endswith(_INDEXING) else store
    except BaseException as e:
        fixturedef.cached_result = (None, key, (e, e.__traceback__))
        raise
    fixturedef.cached_result = (value, key, None)
    return value


def _store_arg(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    return next((name for name in _FIXTURES if name in callspec.params), None)


def _store_param(item: pytest.Item) -> Any:
    name = _store_arg(item)
    return item.callspec.params[name] if name else None  # type: ignore[attr-defined]


def _group(item: pytest.Item) -> tuple[Any, ...]:
    """What a test shares with its variants on other stores: everything but the store."""
    callspec = item.callspec  # type: ignore[attr-defined]
    arg = _store_arg(item)
    # by value (repr: values may be arrays); callspec.indices is no key in pytest 9
    others = tuple(sorted((k, repr(v)) for k, v in callspec.params.items() if k != arg))
    return (item.parent.nodeid if item.parent else "", item.originalname, others)  # type: ignore[attr-defined]


def _inapplicable(item: pytest.Item, table: dict[str, str]) -> str | None:
    """Why ``item`` cannot run on a swarmstore store, or None: the table names its test
    function, or its source reads zarr's ``MemoryStore`` internals (``_store_dict``)."""
    function = item.nodeid.split("[", 1)[0]
    if function in table:
        return table[function]
    try:
        source = inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (OSError, TypeError):
        return None
    if "_store_dict" in source:
        return "the test reads zarr's MemoryStore internals (_store_dict)"
    return None


def _sample(groups: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[str]]:
    """The parameter combinations kept, each with the modes it runs over (see
    ``peer_harness.sampling``: N combinations per test function, spread over its
    combinations; K modes per combination, rotating from one function to the next)."""
    per, k = sampling()
    by_function: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for g in groups:
        if g not in by_function[g[:2]]:
            by_function[g[:2]].append(g)
    kept: dict[tuple[Any, ...], list[str]] = {}
    for function, combos in by_function.items():
        for i, combo in enumerate(spread(combos, per)):
            kept[combo] = rotation(f"{function[0]}::{function[1]}#{i}", list(MODES), k)
    return kept


def _wanted(item: pytest.Item, modes: list[str]) -> bool:
    param = _store_param(item)
    return param in STOCK or param in modes


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    chosen = [it for it in items if _store_param(it) in (*STOCK, *MODES)]
    kept = _sample([_group(it) for it in chosen])
    chosen = [it for it in chosen if _group(it) in kept and _wanted(it, kept[_group(it)])]
    stock: dict[tuple[tuple[Any, ...], str], str] = {
        (_group(it), _store_param(it)): it.nodeid for it in chosen if _store_param(it) in STOCK
    }
    known = known_for("zarr")
    inapplicable = not_applicable("zarr")
    selected = []
    for it in chosen:
        param = _store_param(it)
        if param in MODES:
            base = MODES[param].base
            other = "local" if base == "memory" else "memory"
            ref = stock.get((_group(it), base)) or stock.get((_group(it), other))
            if ref is None:
                continue  # no stock reference in this run: nothing to compare with
            it.stash[MODE] = param
            it.stash[BASE] = ref
            why = _inapplicable(it, inapplicable)
            if why:
                it.add_marker(pytest.mark.skip(reason=f"peers harness: {why}"))
        mark_known(it, known)
        selected.append(it)
    keep = set(selected)
    deselected = [it for it in items if it not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected
