"""pytest plugin: xarray's Zarr backend test classes, subclassed with swarmstore stores.

Loaded into xarray's test run (``-p peer_harness -p peer_xarray``, xarray's
``xarray/tests/`` from its sdist). xarray tests its Zarr backend through the ``ZarrBase``
family: each subclass supplies ``create_zarr_target()``, a context manager yielding what
``to_zarr``/``open_zarr`` get as ``store``. ``TestZarrDictStore`` yields a zarr
``MemoryStore``, ``TestZarrDirectoryStore`` a path in a temporary directory.

When pytest collects those two classes in ``test_backends.py``, this plugin adds one
subclass per swarmstore mode next to them (``TestZarrDictStore`` for modes on memory,
``TestZarrDirectoryStore`` for modes on local disk) whose ``create_zarr_target`` yields the
mode's store built inside a fresh temporary directory made (and removed) the way
``TestZarrDirectoryStore`` makes its own, and closed before that directory is removed, as
anyone deleting a store's directory closes the store first (copies a test makes by
pickling cannot be closed by the harness: what they leave is theirs). Every other test
method is inherited unchanged, so each swarmstore test has a stock twin with the same name
and parameters.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
from peer_harness import BASE, MODE, mark_known, rotation, sampling, spread
from peer_known import known_for, not_applicable
from swarm_stores import MODES, build

if TYPE_CHECKING:
    from collections.abc import Iterator

STOCK = {"memory": "TestZarrDictStore", "local": "TestZarrDirectoryStore"}
_MODULE = "test_backends.py"


def class_name(mode: str) -> str:
    """``ss-tiered-disk`` -> ``TestZarrSwarmTieredDisk``."""
    return "TestZarrSwarm" + "".join(p.title() for p in mode.split("-")[1:])


def _subclass(module: Any, base: type, mode: str) -> type:
    create_tmp_file = module.create_tmp_file

    @contextlib.contextmanager
    def create_zarr_target(self: Any) -> Iterator[Any]:
        with create_tmp_file(suffix=".zarr") as tmp:
            os.mkdir(tmp)
            store = build(mode, pathlib.Path(tmp))
            try:
                yield store
            finally:
                store.close()  # its background work ends before its directory goes

    doc = f"xarray's {base.__name__} tests over swarmstore's {mode} store."
    attrs = {"create_zarr_target": create_zarr_target, "__doc__": doc}
    attrs["__module__"] = module.__name__
    attrs["__qualname__"] = class_name(mode)
    return type(class_name(mode), (base,), attrs)


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    result = yield
    if not isinstance(collector, pytest.Module) or collector.path.name != _MODULE:
        return result
    for base_store, stock in STOCK.items():
        if name != stock:
            continue
        extra = []
        for mode in (m for m in MODES.values() if m.base == base_store):
            cls = _subclass(collector.obj, obj, mode.name)  # type: ignore[arg-type]
            setattr(collector.obj, cls.__name__, cls)
            extra.append(pytest.Class.from_parent(collector, name=cls.__name__))
        items = result if isinstance(result, list) else [result]
        return [*items, *extra]
    return result


def _mode_of(item: pytest.Item) -> str | None:
    cls = getattr(item, "cls", None)
    name = cls.__name__ if cls is not None else ""
    return next((m for m in MODES if class_name(m) == name), None)


def _combo(item: pytest.Item) -> tuple[str, str]:
    callspec = getattr(item, "callspec", None)
    return (item.originalname, callspec.id if callspec is not None else "")  # type: ignore[attr-defined]


def _sample(items: list[pytest.Item]) -> dict[tuple[str, str], list[str]]:
    """Kept (method, parameter id) pairs with the modes each runs over (``sampling``)."""
    per, k = sampling()
    by_method: dict[str, list[str]] = defaultdict(list)
    for it in items:
        name, combo = _combo(it)
        if combo not in by_method[name]:
            by_method[name].append(combo)
    kept: dict[tuple[str, str], list[str]] = {}
    for name, combos in by_method.items():
        for i, combo in enumerate(spread(combos, per)):
            kept[(name, combo)] = rotation(f"{name}#{i}", list(MODES), k)
    return kept


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Keep the stock classes and their swarmstore subclasses (sampled); pair each swarmstore
    test with its stock twin, which is kept with it."""
    classes = {*STOCK.values(), *(class_name(m) for m in MODES)}
    ours = [it for it in items if getattr(getattr(it, "cls", None), "__name__", "") in classes]
    kept = _sample(ours)
    ids = {it.nodeid for it in ours}
    known = known_for("xarray")
    inapplicable = not_applicable("xarray")
    chosen, bases = [], set()
    for it in ours:
        mode = _mode_of(it)
        if mode is None:
            continue
        if mode not in kept.get(_combo(it), ()):
            continue
        base = it.nodeid.replace(f"::{class_name(mode)}::", f"::{STOCK[MODES[mode].base]}::")
        it.stash[MODE] = mode
        it.stash[BASE] = base if base in ids else None
        bases.add(base)
        why = inapplicable.get(it.nodeid.split("[", 1)[0])
        if why:
            it.add_marker(pytest.mark.skip(reason=f"peers harness: {why}"))
        chosen.append(it)
    chosen += [it for it in ours if _mode_of(it) is None and it.nodeid in bases]
    order = {it: i for i, it in enumerate(items)}
    chosen.sort(key=order.__getitem__)
    for it in chosen:
        mark_known(it, known)
    keep = set(chosen)
    deselected = [it for it in items if it not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = chosen
