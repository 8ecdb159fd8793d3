"""Known failures of the peer suites over swarmstore that belong to other rooms (issue 23).

Each is marked ``xfail(strict=True)`` in the peer's run: the suite stays green while the
defect stands, and turns red (XPASS strict) the day its room fixes it; then delete the
entry. Keys are the peer's test ids exactly as its run names them.
"""

from __future__ import annotations

import re

KNOWN: dict[str, dict[str, str]] = {
    "zarr": {},
    "xarray": {},
    "distributed": {},
}

#: distributed tests left to the full run (``SWARMSTORE_PEERS=full``): each costs more
#: than 10 s of a CI machine on its own, stock and with the plugin (measured, see docs)
HEAVY = (
    "distributed/tests/test_steal.py::test_restart",
    "distributed/tests/test_steal.py::test_trivial_workload_should_not_cause_work_stealing",
    "distributed/tests/test_steal.py::test_steal_very_fast_tasks",
    "distributed/tests/test_active_memory_manager.py::test_client_proxy_sync",
    "distributed/tests/test_scheduler.py::test_forget_tasks_while_processing",
    "distributed/tests/test_client.py::test_context_manager_used_from_different_threads",
    "distributed/tests/test_client.py::test_computation_object_code_not_available",
    "distributed/tests/test_client.py::test_Future_exception_sync",
)


def known_for(peer: str) -> dict[str, str]:
    """nodeid -> xfail reason for ``peer``."""
    return KNOWN[peer]


#: Tests that cannot run on a swarmstore store for a reason of the test, not of the store
#: (peer -> test function id -> why); their swarmstore variants are skipped with that reason.
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "zarr": {},
    "xarray": {},
    "distributed": {},
}


def not_applicable(peer: str) -> dict[str, str]:
    """Test function id (no parameters) -> why its swarmstore variants are skipped."""
    return NOT_APPLICABLE[peer]


#: Known failures whose test ids vary from run to run (they race a background thread): a
#: finding whose failure text matches is put down to the known defect instead of failing
#: the comparison, and a deterministic test pins the defect as xfail(strict) (named here).
#: (peer, modes, pattern, reason)
CAUSES: list[tuple[str, frozenset[str], re.Pattern[str], str]] = []


def known_cause(peer: str, mode: str, summary: str) -> str | None:
    """The known defect a failure of ``peer`` over ``mode`` reads as, or None."""
    for who, modes, pattern, reason in CAUSES:
        if who == peer and mode in modes and pattern.search(summary):
            return reason
    return None
