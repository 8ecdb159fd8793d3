"""The heap pad erasure coding sets (``storage.coding-heap-pad``): once, validated, off at 0."""

from __future__ import annotations

import sys

import dask
import pytest

from swarmstore.errors import ConfigError
from swarmstore.storage import _heap


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_heap, "_done", False)
    return _heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_pad_is_set_once_per_process(fresh):
    with dask.config.set({"swarmstore.storage.coding-heap-pad": "8MiB"}):
        assert fresh.keep_pad() == 8 * 2**20
        assert fresh.keep_pad() == 0  # already applied: the allocator is asked once


def test_zero_leaves_the_allocator_alone(fresh, monkeypatch):
    monkeypatch.setattr(fresh, "_mallopt", lambda: pytest.fail("mallopt called at pad 0"))
    with dask.config.set({"swarmstore.storage.coding-heap-pad": 0}):
        assert fresh.keep_pad() == 0


def test_a_bad_pad_is_a_config_error(fresh):
    with dask.config.set({"swarmstore.storage.coding-heap-pad": "lots"}):
        with pytest.raises(ConfigError, match="coding-heap-pad"):
            fresh.keep_pad()


def test_without_glibc_nothing_is_set(fresh, monkeypatch):
    monkeypatch.setattr(fresh, "_mallopt", lambda: None)
    with dask.config.set({"swarmstore.storage.coding-heap-pad": "8MiB"}):
        assert fresh.keep_pad() == 0
