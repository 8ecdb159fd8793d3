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
``distributed.tests`` resolves to the fetched tests, as it does in distributed's checkout.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import distributed
import pytest
from distributed import Scheduler
from peer_harness import BASE, MODE, mark_known
from peer_known import known_for, not_applicable

from swarmstore.compute import SwarmPlugin

if TYPE_CHECKING:
    from collections.abc import Iterator

SWARM = "swarm"
_ARG = "swarmstore_in_every_scheduler"


def pytest_configure(config: pytest.Config) -> None:
    fetched = pathlib.Path(config.rootpath) / "distributed"
    if fetched.is_dir() and str(fetched) not in distributed.__path__:
        distributed.__path__.append(str(fetched))


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


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    known = known_for("distributed")
    inapplicable = not_applicable("distributed")
    stock = {}
    for it in items:
        callspec = getattr(it, "callspec", None)
        if callspec is not None and callspec.params.get(_ARG) == "stock":
            stock[_group(it)] = it.nodeid
    for it in items:
        callspec = getattr(it, "callspec", None)
        if callspec is not None and callspec.params.get(_ARG) == SWARM:
            it.stash[MODE] = SWARM
            it.stash[BASE] = stock.get(_group(it))
            why = inapplicable.get(it.nodeid.split("[", 1)[0])
            if why:
                it.add_marker(pytest.mark.skip(reason=f"peers harness: {why}"))
        mark_known(it, known)
