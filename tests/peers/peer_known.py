"""Known failures of the peer suites over swarmstore that belong to other rooms (issue 23).

Each is marked ``xfail(strict=True)`` in the peer's run: the suite stays green while the
defect stands, and turns red (XPASS strict) the day its room fixes it; then delete the
entry. Keys are the peer's test ids exactly as its run names them.
"""

from __future__ import annotations

KNOWN: dict[str, dict[str, str]] = {
    "zarr": {},
    "xarray": {},
    "distributed": {},
}


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
