"""Circuits: consecutive strikes eject a source; Envoy-style backoff; one trial at a time."""

from swarmstore.network import Circuit


def test_opens_after_consecutive_strikes_only():
    c = Circuit(threshold=3, reset=5.0)
    c.failure(0.0)
    c.failure(0.0)
    c.success(0.0)
    c.failure(0.0)
    c.failure(0.0)
    assert c.state(1.0) == "closed"
    assert c.failure(1.0) is True
    assert c.state(1.0) == "open" and not c.admits(5.9) and c.opened == 1


def test_ejection_time_grows_with_ejections_and_is_capped():
    c = Circuit(threshold=1, reset=1.0, max_reset=3.0)
    c.failure(0.0)
    assert c.reset == 1.0 and c.state(0.9) == "open" and c.state(1.0) == "half-open"
    resets = []
    now = 1.0
    for _ in range(4):  # every trial fails: 2, 3, 3, 3 s
        assert c.begin(now)
        c.failure(now)
        resets.append(c.reset)
        now += c.reset
    assert resets == [2.0, 3.0, 3.0, 3.0]
    assert c.opened == 1  # one ejection from closed; the rest were failed trials


def test_one_trial_at_a_time_and_abandoned_trials_free_the_slot():
    c = Circuit(threshold=1, reset=1.0)
    c.failure(0.0)
    assert c.admits(1.0) and c.begin(1.0)
    assert not c.admits(1.0) and c.begin(1.0) is False
    c.abandon()  # no verdict (cancelled, key missing): the next request may try
    assert c.admits(1.0)
    assert not c.admits(1.0, trial=False)  # left to the prober: reads never serve as trials
    c.begin(1.0)
    c.success(1.2)
    assert c.state(100.0) == "closed" and c.admits(100.0, trial=False)


def test_the_backoff_forgets_after_a_healthy_spell():
    c = Circuit(threshold=1, reset=1.0, max_reset=4.0)
    c.failure(0.0)
    c.begin(1.0)
    c.failure(1.0)  # ejections: 2
    c.begin(3.0)
    c.success(3.0)
    c.failure(4.0)  # soon after: the third ejection, 3 s
    assert c.reset == 3.0
    c.begin(7.0)
    c.success(7.0)
    c.failure(7.0 + 4.0)  # healthy for max_reset: back to the base time
    assert c.reset == 1.0 and c.ejections == 1
