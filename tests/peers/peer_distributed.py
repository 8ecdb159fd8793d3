"""pytest plugin: distributed's own tests, each run stock and with SwarmPlugin in every scheduler.

Loaded into distributed's test run (``-p peer_harness -p peer_distributed``, distributed's
``distributed/tests/`` from its release tag). An autouse fixture parametrised
``["stock", "swarm"]`` doubles every selected test: the ``swarm`` copy runs with
``Scheduler.__init__`` wrapped so that every scheduler the test starts, however it starts
it (``gen_cluster``, ``LocalCluster``, ``Scheduler()`` directly), gets
``SwarmPlugin()`` added before it starts, exactly as ``plugins/scheduler.py`` (the
``--preload`` script) adds it. The ``stock`` copy runs right next to it, untouched.

distributed's tests name classes by their dotted path under ``distributed.tests`` (AMM
policies in config); its sources keep the tests inside the package. The fetched
``distributed/`` directory is appended to the installed package's ``__path__`` so that
``distributed.tests`` resolves to the fetched tests, as it does in distributed's checkout,
and ``utils_test.certs_dir`` points at the TLS certificates among them.
"""

from __future__ import annotations

import os
import pathlib
import zlib
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import distributed
import pytest
from distributed import Scheduler, utils_test
from peer_harness import BASE, MODE, mark_known, sampling, spread
from peer_known import HEAVY, known_for, not_applicable

from swarmstore.compute import SwarmPlugin

if TYPE_CHECKING:
    from collections.abc import Iterator

SWARM = "swarm"
_ARG = "swarmstore_in_every_scheduler"


def pytest_configure(config: pytest.Config) -> None:
    fetched = pathlib.Path(config.rootpath) / "distributed"
    if fetched.is_dir() and str(fetched) not in distributed.__path__:
        distributed.__path__.append(str(fetched))
    # the TLS certificates live with the tests, which the installed package lacks
    utils_test.certs_dir = str(fetched / "tests")
    # pytest-rerunfailures' marker, which distributed's CI has: here flaky tests run once
    # (stock and with the plugin alike; a finding is re-run alone before it counts)
    config.addinivalue_line("markers", "flaky: pytest-rerunfailures' marker (not installed)")


@pytest.fixture(params=["stock", SWARM], autouse=True)
def swarmstore_in_every_scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """``swarm``: every Scheduler built during the test carries ``SwarmPlugin()``."""
    if request.param != SWARM:
        yield request.param
        return
    original = Scheduler.__init__

    def __init__(self: Scheduler, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.add_plugin(SwarmPlugin(), idempotent=True)

    Scheduler.__init__ = __init__  # type: ignore[method-assign]
    try:
        yield request.param
    finally:
        Scheduler.__init__ = original  # type: ignore[method-assign]


def _group(item: pytest.Item) -> tuple[Any, ...]:
    callspec = item.callspec  # type: ignore[attr-defined]
    # by value (repr: values may be arrays); callspec.indices is no key in pytest 9
    others = tuple(sorted((k, repr(v)) for k, v in callspec.params.items() if k != _ARG))
    return (item.parent.nodeid if item.parent else "", item.originalname, others)  # type: ignore[attr-defined]


def _kept_fraction(item: pytest.Item, fractions: dict[str, tuple[int, int]]) -> bool:
    """``PEER_KEEP`` (``file:k/n,...``): keep the test functions of ``file`` whose name
    hashes into k of n buckets (stable across runs); files not named keep every test."""
    k, n = fractions.get(item.path.name, (1, 1))
    return zlib.crc32(item.originalname.encode()) % n < k  # type: ignore[attr-defined]


def _sampled(items: list[pytest.Item], always: set[str]) -> list[pytest.Item]:
    """``PEER_SAMPLE`` parameter combinations per test function (its stock and swarm runs
    together), spread over its combinations; known failures are always kept."""
    per, _ = sampling()
    combos: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for it in items:
        g = _group(it)
        if g not in combos[g[:2]]:
            combos[g[:2]].append(g)
    kept = {g for gs in combos.values() for g in spread(gs, per)}
    return [it for it in items if _group(it) in kept or it.nodeid.split("[", 1)[0] in always]


def _fractions() -> dict[str, tuple[int, int]]:
    out = {}
    for part in filter(None, os.environ.get("PEER_KEEP", "").split(",")):
        name, _, frac = part.partition(":")
        k, _, n = frac.partition("/")
        out[name.strip()] = (int(k), int(n))
    return out


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    known = known_for("distributed")
    inapplicable = not_applicable("distributed")
    heavy = set() if os.environ.get("PEER_HEAVY") else set(HEAVY)
    fractions = _fractions()
    base_ids = {k.rsplit("[", 1)[0] for k in known}
    chosen = [
        it
        for it in items
        if it.nodeid.split("[", 1)[0] in base_ids
        or (_kept_fraction(it, fractions) and it.nodeid.split("[", 1)[0] not in heavy)
    ]
    chosen = _sampled(chosen, base_ids)
    stock = {}
    for it in chosen:
        callspec = getattr(it, "callspec", None)
        if callspec is not None and callspec.params.get(_ARG) == "stock":
            stock[_group(it)] = it.nodeid
    for it in chosen:
        callspec = getattr(it, "callspec", None)
        if callspec is not None and callspec.params.get(_ARG) == SWARM:
            it.stash[MODE] = SWARM
            it.stash[BASE] = stock.get(_group(it))
            why = inapplicable.get(it.nodeid.split("[", 1)[0])
            if why:
                it.add_marker(pytest.mark.skip(reason=f"peers harness: {why}"))
        mark_known(it, known)
    keep = set(chosen)
    deselected = [it for it in items if it not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = chosen
