"""The cost model: windowed medians per size class, setup kept out, bandwidth, deadlines."""

import pytest

from swarmstore.network import SourceStats
from swarmstore.network._model import RECENT, WINDOW, size_class

KiB, MiB = 1024, 1024**2


def test_size_classes_split_small_from_large_reads():
    assert [size_class(n) for n in (None, 0, 1, 64 * KiB)] == [0, 0, 0, 0]
    assert [size_class(n) for n in (64 * KiB + 1, 256 * KiB, MiB, 4 * MiB, 16 * MiB)] == [
        1,
        1,
        2,
        3,
        4,
    ]
    assert size_class(2**40) == 8  # everything huge shares the last class


def test_the_setup_request_is_counted_but_never_sampled():
    st = SourceStats()
    st.fold(4.0, 1000, setup=True)  # client creation: seconds
    assert st.setups == 1 and st.expected(1000) is None and not st.samples
    st.fold(0.01, 1000, setup=True)  # only the first request of a source is setup
    assert st.expected(1000) == pytest.approx(0.01) and st.setups == 1


def test_one_outlier_never_moves_the_estimate_but_a_change_of_speed_does():
    st = SourceStats()
    for _ in range(RECENT):
        st.fold(0.010, 1000)
    st.fold(2.0, 1000)  # a stall
    assert st.expected(1000) == pytest.approx(0.010)
    moved_after = None
    for i in range(1, RECENT + 1):
        st.fold(0.060, 1000)
        if moved_after is None and st.expected(1000) == pytest.approx(0.060):
            moved_after = i
    assert moved_after is not None and moved_after <= RECENT // 2  # the median flips


def test_each_size_class_has_its_own_estimate_and_bandwidth_comes_from_every_read():
    st = SourceStats()
    for _ in range(5):
        st.fold(0.005 + 64 * KiB / 2e6, 64 * KiB)  # 5 ms + a 2 MB/s link
        st.fold(0.005 + 4 * MiB / 2e6, 4 * MiB)
    assert st.bandwidth == pytest.approx(2e6, rel=0.01)
    assert st.latency_floor() == pytest.approx(0.005, abs=1e-4)
    assert st.expected(64 * KiB) == pytest.approx(0.005 + 64 * KiB / 2e6)
    # a size never read here is extrapolated from the fit
    assert st.expected(MiB) == pytest.approx(0.005 + MiB / 2e6, rel=0.01)


def test_a_larger_size_than_any_measured_is_unknown_until_measured():
    st = SourceStats()
    st.fold(0.010, 64 * KiB)
    assert st.expected(4 * MiB) is None  # one size known: no bandwidth to extrapolate with
    assert st.expected(1000) == pytest.approx(0.010)  # smaller: no slower than measured
    assert not st.known(4 * MiB) and st.known(1000)


def test_cancelled_reads_raise_the_estimate_only():
    st = SourceStats()
    for _ in range(RECENT):
        st.fold(0.010, 0)
    st.floor(0.001)  # cancelled early: says nothing new
    assert st.expected(0) == pytest.approx(0.010)
    for _ in range(RECENT):
        st.floor(0.5)  # overtaken again and again after 500 ms: at least that slow
    assert st.expected(0) == pytest.approx(0.5)
    assert st.quantile(0.99, 1, 0) == pytest.approx(0.010)  # the tail window is real samples


def test_quantiles_follow_the_long_window_exactly():
    import random

    rng = random.Random(1)
    st = SourceStats()
    seen = []
    for _ in range(3 * WINDOW):
        x = rng.choice([0.001, 0.002, rng.random()])
        st.fold(x, 10)
        seen.append(x)
        ranked = sorted(seen[-WINDOW:])
        for q in (0.0, 0.5, 0.95):
            assert st.quantile(q, 1, 10) == ranked[min(len(ranked) - 1, int(q * len(ranked)))]
    assert st.quantile(0.5, WINDOW + 1, 10) is None  # fewer samples than asked for


def test_deadlines_scale_with_the_learned_tail_and_have_a_floor():
    st = SourceStats()
    assert st.deadline(1000, 2.0, 0.5, 10.0) == 10.0  # never measured: the cold deadline
    for _ in range(50):
        st.fold(0.002, 1000)
    assert st.deadline(1000, 2.0, 0.5, 10.0) == 0.5  # 2 x 2 ms is under the floor
    for _ in range(50):
        st.fold(0.8, 1000)
    assert st.deadline(1000, 2.0, 0.5, 10.0) == pytest.approx(1.6)
    assert st.deadline(4 * MiB, 2.0, 0.5, 10.0) == 10.0  # that size: never measured
