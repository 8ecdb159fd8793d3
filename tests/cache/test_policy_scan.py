"""The RAM tier's S3-FIFO policy against plain LRU: a hot set read beside repeated scans
larger than RAM. The scans are read once per pass, so S3-FIFO lets them through its small
queue and keeps the hot set; LRU lets every scan push the hot set out."""

from __future__ import annotations

import random

import pytest

from swarmstore.cache import MemoryTier
from swarmstore.cache._tier import Entry

VALUE = b"v" * 1000


def _hit_rates(policy: str, *, p_hot: float, seed: int = 1) -> tuple[float, float]:
    """(hit rate of the hot keys, overall hit rate) of a read-through RAM tier of 100
    values, 50 hot keys, and a scan of 300 keys (3x RAM) repeated over and over."""
    tier = MemoryTier(100 * (len(VALUE) + 200), admission_fraction=1.0, policy=policy)
    rng = random.Random(seed)
    hits = {"hot": 0, "scan": 0}
    reads = {"hot": 0, "scan": 0}
    scan_pos = 0
    for step in range(20_000):
        if rng.random() < p_hot:
            key, kind = f"hot/{rng.randrange(50)}", "hot"
        else:
            key, kind = f"scan/{scan_pos % 300}", "scan"
            scan_pos += 1
        found = tier.get_sync("ns", key, None)
        if step >= 2_000:  # past the warm-up
            reads[kind] += 1
            hits[kind] += found is not None
        if found is None:
            tier.put_sync("ns", key, None, Entry(VALUE, 0.0), tier.ticket("ns", key))
    assert tier.nbytes <= tier.max_bytes
    return hits["hot"] / reads["hot"], sum(hits.values()) / sum(reads.values())


@pytest.mark.parametrize("p_hot", [0.3, 0.5])
def test_s3fifo_keeps_the_hot_set_through_scans(p_hot: float) -> None:
    s3_hot, s3_all = _hit_rates("s3fifo", p_hot=p_hot)
    lru_hot, lru_all = _hit_rates("lru", p_hot=p_hot)
    assert s3_hot >= 0.95  # the hot set stays resident
    assert lru_hot <= 0.8  # LRU loses part of it to every scan
    assert s3_all >= 1.3 * lru_all


def test_without_scans_both_keep_a_hot_set_that_fits() -> None:
    for policy in ("s3fifo", "lru"):
        hot, _ = _hit_rates(policy, p_hot=1.0)
        assert hot == 1.0, policy
