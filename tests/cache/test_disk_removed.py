"""A cache directory removed under a disk tier stays removed (issue 23).

``shutil.rmtree`` lists a directory, removes what it listed, then removes the directory:
anything the tier's fill thread creates in there meanwhile makes it fail ("Directory not
empty") and leaves a directory behind that the user removed. So the fill thread creates,
opens and rebuilds nothing: a removed index or directory stops its fills, and only a
caller's next call (a read or a write) starts afresh, with a CacheWarning.

Each test removes the pieces in the order ``rmtree`` may take (the index first, its
directory later) and runs the fill thread in between, by ``flush()``, which waits for it.
"""

from __future__ import annotations

import shutil
import warnings
from typing import TYPE_CHECKING

import pytest

from swarmstore.cache import DiskTier
from swarmstore.errors import CacheWarning

if TYPE_CHECKING:
    import pathlib


def _names(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _fill_in_background(tier: DiskTier, key: str, ticket: object) -> None:
    """Queue a fill for the fill thread and wait until it has run (it may warn)."""
    tier.submit("ns", key, None, b"value of " + key.encode(), ticket=ticket)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        tier.flush()


def test_the_fill_thread_never_recreates_a_removed_index(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    tier = DiskTier(cache, fsync=False)
    assert tier.write("ns", "k0", None, b"first")
    ticket = tier.ticket("ns", "k1")  # a read's miss, before the directory is removed
    (cache / "index.sqlite3").unlink()  # rmtree's first step, the data directory still there
    _fill_in_background(tier, "k1", ticket)
    assert not (cache / "index.sqlite3").exists(), _names(cache)
    shutil.rmtree(cache)  # the rest of the removal: nothing was added behind its back
    _fill_in_background(tier, "k2", ticket)
    assert not cache.exists(), _names(cache)
    tier.close()
    assert not cache.exists(), _names(cache)


def test_the_fill_thread_never_reopens_a_closed_tier(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    tier = DiskTier(cache, fsync=False)
    ticket = tier.ticket("ns", "k1")
    tier.close()
    (cache / "index.sqlite3").unlink()
    _fill_in_background(tier, "k1", ticket)
    assert not (cache / "index.sqlite3").exists(), _names(cache)
    shutil.rmtree(cache)
    tier.close()
    assert not cache.exists()


def test_a_caller_reopens_an_index_removed_alone(tmp_path: pathlib.Path) -> None:
    """The index alone deleted (not the directory): the fill thread drops its fills, the
    next call of a caller reopens (rebuilds) the index, and fills land again."""
    cache = tmp_path / "cache"
    tier = DiskTier(cache, fsync=False)
    assert tier.write("ns", "k0", None, b"first")
    stale = tier.ticket("ns", "k1")
    (cache / "index.sqlite3").unlink()
    _fill_in_background(tier, "k1", stale)
    assert tier.read("ns", "k1", None) is None  # dropped, never written unindexed
    with pytest.warns(CacheWarning, match="index"):
        ticket = tier.ticket("ns", "k1")  # a caller's call: the index is rebuilt
    assert (cache / "index.sqlite3").exists()
    _fill_in_background(tier, "k1", ticket)
    assert bytes(tier.read("ns", "k1", None).data) == b"value of k1"
    assert bytes(tier.read("ns", "k0", None).data) == b"first"
    assert tier.stats()["entries"] == 2  # k0 was found again by the rebuild
    tier.close()


def test_a_caller_restarts_a_removed_directory_with_a_warning(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    tier = DiskTier(cache, fsync=False)
    assert tier.write("ns", "k0", None, b"first")
    ticket = tier.ticket("ns", "k1")
    shutil.rmtree(cache)
    _fill_in_background(tier, "k1", ticket)
    assert not cache.exists()
    with pytest.warns(CacheWarning, match="removed"):
        assert tier.write("ns", "k2", None, b"again")
    assert bytes(tier.read("ns", "k2", None).data) == b"again"
    tier.close()


def test_the_fill_thread_never_recreates_a_removed_subdirectory(tmp_path: pathlib.Path) -> None:
    """``rmtree`` removes ``data/`` one subdirectory at a time: one a fill needs may be gone
    while ``data/`` is still there. The ticket (a caller's call) creates it; the fill thread
    only renames into it, so it drops the fill rather than create the subdirectory again."""
    cache = tmp_path / "cache"
    tier = DiskTier(cache, fsync=False)
    ticket = tier.ticket("ns", "k1")
    sub = cache / "data" / ticket.sub
    shutil.rmtree(sub, ignore_errors=True)
    _fill_in_background(tier, "k1", ticket)
    assert not sub.exists(), _names(cache)
    assert tier.read("ns", "k1", None) is None
    tier.close()
