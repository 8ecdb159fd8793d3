"""``settlement``: what a create that found data does next, from its targets' states (the
decision the state machine's failed-write finding changed; issue 16)."""

from __future__ import annotations

from swarmstore.storage._create import settlement
from swarmstore.storage._integrity import Record
from swarmstore.storage._node import State


def value(counter: int) -> State:
    return State(size=1, record=Record.of(b"x", version=(counter, 7)))


def tomb(counter: int) -> State:
    return State(tomb=Record.tombstone((counter, 7)))


def test_the_newest_on_a_write_quorum_is_settled():
    assert settlement([value(2), value(2), value(1)], 2) == "settled"


def test_an_older_value_on_a_quorum_beside_a_newer_one_is_converged_first():
    """The finding: E on two targets, a failed write's Z on the third. Answering "exists"
    let reads return E and a later repair surface Z."""
    assert settlement([value(1), value(1), value(2)], 2) == "converge"


def test_disagreeing_values_none_on_a_quorum_are_converged_too():
    """Write-all (W = R): a failed write leaves no version on a quorum."""
    assert settlement([value(1), value(1), value(2)], 3) == "converge"


def test_a_lone_value_short_of_a_quorum_is_waited_for():
    """A racer's creation still landing on the other targets."""
    assert settlement([value(3), State(), State()], 2) == "wait"


def test_values_older_than_a_tombstone_are_absent():
    assert settlement([value(1), tomb(2), State()], 2) == "absent"
    assert settlement([value(3), tomb(2), State()], 2) == "wait"
