import collections

import pytest

from swarmstore.hashing import Member, Rendezvous

KEYS = [f"arr/c/{i}/{i % 7}" for i in range(100_000)]


def _owners(ring: Rendezvous) -> list[str]:
    return [ring.owner(k).name for k in KEYS]


def test_removing_one_of_n_moves_about_one_nth():
    members = [Member(f"n{i}") for i in range(10)]
    before = _owners(Rendezvous(members))
    after = _owners(Rendezvous(members[:-1]))
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(KEYS)
    assert 0.08 < moved < 0.12  # ~1/10
    # only the removed member's keys moved
    assert all(a == b for a, b in zip(before, after, strict=True) if a != "n9")


def test_adding_one_moves_about_one_in_n_plus_one():
    members = [Member(f"n{i}") for i in range(9)]
    before = _owners(Rendezvous(members))
    after = _owners(Rendezvous([*members, Member("new")]))
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 0.08 < len(moved) / len(KEYS) < 0.12
    assert all(b == "new" for _, b in moved)


def test_weights_scale_the_share():
    ring = Rendezvous([Member("big", weight=3.0), Member("small", weight=1.0)])
    counts = collections.Counter(ring.owner(k).name for k in KEYS[:20_000])
    share = counts["big"] / 20_000
    assert 0.72 < share < 0.78


def test_replicas_land_in_distinct_zones_when_possible():
    ring = Rendezvous(
        [
            Member("a1", zone="a"),
            Member("a2", zone="a"),
            Member("b1", zone="b"),
            Member("c1", zone="c"),
        ]
    )
    for k in KEYS[:2000]:
        chosen = ring.choose(k, 3)
        assert len({m.zone for m in chosen}) == 3
    # more replicas than zones: still distinct members, zones first
    two_zones = Rendezvous([Member("a1", zone="a"), Member("a2", zone="a"), Member("b1", zone="b")])
    for k in KEYS[:500]:
        chosen = two_zones.choose(k, 3)
        assert len({m.name for m in chosen}) == 3
        assert {m.zone for m in chosen[:2]} == {"a", "b"}


def test_rank_starts_with_choose():
    ring = Rendezvous([Member(f"n{i}", zone=i % 2) for i in range(5)])
    for k in KEYS[:200]:
        assert ring.rank(k)[:3] == ring.choose(k, 3)


def test_bad_members_are_refused():
    with pytest.raises(ValueError, match="unique"):
        Rendezvous([Member("a"), Member("a")])
    with pytest.raises(ValueError, match="weight"):
        Member("a", weight=0)
    with pytest.raises(ValueError, match="cannot choose"):
        Rendezvous([Member("a")]).choose("k", 2)
