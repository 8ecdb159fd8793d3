import random
from collections import deque

import pytest

from swarmstore.network import Circuit, SourceStats


def test_ewma_and_expected_time():
    st = SourceStats()
    assert st.expected(10**6) == 0.0  # never measured: tried first
    st.fold(0.010, 1000, alpha=0.5)
    st.fold(0.020, 1000, alpha=0.5)
    assert st.latency == pytest.approx(0.015)
    assert st.size == pytest.approx(1000)
    # bytes beyond a typical request cost size/bandwidth more; fewer cost nothing extra
    assert st.expected(1000) == pytest.approx(0.015)
    assert st.expected(1000 + int(st.bandwidth)) == pytest.approx(1.015)


def test_quantile_window_and_minimum_samples():
    st = SourceStats(window=100)
    for i in range(200):
        st.fold((i % 100) / 1000, 0, alpha=0.2)
    assert len(st.samples) == 100
    assert st.quantile(0.95) == pytest.approx(0.095)
    assert st.quantile(0.5) == pytest.approx(0.050)
    assert SourceStats().quantile(0.95) is None
    few = SourceStats()
    few.fold(0.01, 0, 0.2)
    assert few.quantile(0.95, min_samples=20) is None


def test_quantiles_follow_the_window_exactly():
    """The window is kept sorted as samples come and go (duplicates included)."""
    rng = random.Random(1)
    st = SourceStats(window=50)
    for _ in range(500):
        st.fold(rng.choice([0.001, 0.002, rng.random()]), 0, alpha=0.2)
        ranked = sorted(st.samples)
        for q in (0.0, 0.5, 0.95):
            assert st.quantile(q) == ranked[min(len(ranked) - 1, int(q * len(ranked)))]
    st.samples = deque([0.3, 0.1, 0.2])  # replaced from outside: ranked again
    assert st.quantile(0.5) == 0.2


def test_floor_only_raises_the_average():
    st = SourceStats()
    st.fold(0.010, 0, alpha=0.5)
    st.floor(0.005, alpha=0.5)  # cancelled early: says nothing new
    assert st.latency == pytest.approx(0.010)
    st.floor(0.050, alpha=0.5)  # cancelled after 50 ms: at least that slow
    assert st.latency == pytest.approx(0.030)


def test_circuit_opens_after_consecutive_failures_only():
    c = Circuit(threshold=3, reset=5.0)
    c.failure(0.0)
    c.failure(0.0)
    c.success()
    c.failure(0.0)
    c.failure(0.0)
    assert c.state(1.0) == "closed"
    assert c.failure(1.0) is True
    assert c.state(1.0) == "open" and not c.admits(5.9)


def test_half_open_admits_one_trial_and_backs_off_on_failure():
    c = Circuit(threshold=1, reset=1.0, max_reset=3.0)
    c.failure(0.0)
    assert c.state(1.0) == "half-open" and c.admits(1.0)
    assert c.begin(1.0) is True
    assert not c.admits(1.0) and c.begin(1.0) is False  # one trial at a time
    c.failure(1.5)  # trial failed: open again, twice as long
    assert c.state(3.4) == "open" and c.state(3.5) == "half-open"
    c.begin(3.5)
    c.failure(3.5)
    assert c.reset == 3.0  # capped
    c.begin(6.5)
    c.abandon()  # cancelled trial: the next request may try
    assert c.admits(6.5)
    c.success()
    assert c.state(100.0) == "closed" and c.reset == 1.0
