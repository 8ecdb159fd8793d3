"""What the peers' suites need of a store's lifetime, store by store (issue 23).

zarr's and xarray's tests never close the stores their fixtures make, and pickle stores to
hand them to other processes; zarr's run turns a ResourceWarning at garbage collection into
a failure of whatever test is running then. Here each swarmstore mode is used through zarr,
then dropped (closed or not, the original or a pickled copy), and everything it opened must
be gone once its background threads have had their time: no ResourceWarning, no other
unraisable exception, no swarmstore thread left running.
"""

from __future__ import annotations

import gc
import pathlib
import pickle
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from swarm_stores import MODES, build

from swarmstore.errors import CacheWarning

_DISK = (
    "issue 23: cache: the disk tier's SQLite connection and fill thread are only "
    "released by close(); a store dropped unclosed reaches the garbage collector with its "
    "connection open (ResourceWarning: unclosed database)"
)


def _modes(disk_reason: str | None) -> list[Any]:
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=disk_reason)]
            if (mode.disk_tier and disk_reason)
            else [],
        )
        for name, mode in MODES.items()
    ]


@pytest.fixture(scope="module", autouse=True)
def _earlier_garbage_collected() -> Iterator[None]:
    """Collect what earlier tests left (an s3fs session of another room's test, say) before
    any store under test exists, so what ``_released`` finds is that store's alone (once per
    module: each collection walks the whole heap of a worker that ran zarr's peer suite)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hook, sys.unraisablehook = sys.unraisablehook, lambda u: None
        try:
            for _ in range(3):
                gc.collect()
        finally:
            sys.unraisablehook = hook
    yield


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("swarmstore-")}


def _write(store: Any) -> None:
    arr = zarr.create_array(store, name="a", shape=(64,), chunks=(8,), dtype="i4")
    arr[:] = np.arange(64)


def _use(store: Any) -> None:
    _write(store)
    assert (zarr.open_array(store, path="a", mode="r")[:] == np.arange(64)).all()


def _released(before: set[threading.Thread], allow: tuple[type[Warning], ...] = ()) -> list[str]:
    """Wait (bounded) for the threads started since ``before``; collect; say what is left
    (warnings of the ``allow`` categories are no problem)."""
    problems: list[str] = []
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda u: problems.append(f"unraisable: {u.exc_value!r} in {u.object!r}")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            deadline = time.monotonic() + 10
            while _ours() - before and time.monotonic() < deadline:
                time.sleep(0.05)
            for _ in range(3):
                gc.collect()
    finally:
        sys.unraisablehook = unraisable
    problems += [f"{w.category.__name__}: {w.message}" for w in seen if w.category not in allow]
    problems += [f"thread still running: {t.name}" for t in _ours() - before]
    return problems


@pytest.mark.parametrize("mode", _modes(None))
def test_store_dropped_unclosed_releases_everything(mode: str, tmp_path: pathlib.Path) -> None:
    before = _ours()
    store = build(mode, tmp_path)
    _use(store)
    del store
    assert _released(before) == []


@pytest.mark.parametrize("mode", _modes(None))
def test_pickled_copy_dropped_unclosed_releases_everything(
    mode: str, tmp_path: pathlib.Path
) -> None:
    """A copy made by pickling (a Dask task's, a worker process's) is dropped unclosed."""
    store = build(mode, tmp_path)
    _use(store)
    before = _ours()
    copy = pickle.loads(pickle.dumps(store))
    assert (zarr.open_array(copy, path="a", mode="r")[:] == np.arange(64)).all()
    del copy
    problems = _released(before)
    store.close()
    assert problems == []


@pytest.mark.parametrize("mode", _modes(None))
def test_store_closed_releases_everything(mode: str, tmp_path: pathlib.Path) -> None:
    before = _ours()
    store = build(mode, tmp_path)
    _use(store)
    store.close()
    del store
    assert _released(before) == []


_REMOVED = (
    "issue 23: cache: a pickled copy's background disk writes land in its cache directory "
    "after that directory was removed, and the disk tier silently re-creates it"
)


@pytest.mark.parametrize(
    "mode",
    [pytest.param(m) for m, spec in MODES.items() if spec.disk_tier],
)
def test_removed_directory_stays_removed_under_a_pickled_copy(
    mode: str, tmp_path: pathlib.Path
) -> None:
    """xarray's ``TestZarrDirectoryStore`` removes the directory after each test; a copy of
    the store pickled during the test (``test_pickle_dataarray``) is still filling its disk
    tier then. Removing the directory must succeed, and the directory must stay gone (a
    later write may fail, with a CacheWarning, or start clean elsewhere, never re-create
    it behind the user)."""
    import shutil

    root = tmp_path / "store"
    store = build(mode, root)
    _write(store)  # nothing read yet: the copy's reads miss and queue disk fills
    store.close()
    before = _ours()
    # the copy's fill thread may say the directory went (a CacheWarning): that is allowed,
    # and it must not turn into an error in that thread, after this test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        copy = pickle.loads(pickle.dumps(store))
        assert (zarr.open_array(copy, path="a", mode="r")[:] == np.arange(64)).all()
        try:
            shutil.rmtree(root)  # the copy's fills are queued, not yet written
            removed = None
        except OSError as e:
            removed = e
        _released(before, allow=(CacheWarning,))  # its fill thread has run and exited
        left = sorted(str(p.relative_to(tmp_path)) for p in root.rglob("*"))
        del copy
        problems = _released(before, allow=(CacheWarning,))
    assert removed is None, f"removing the directory failed under the copy: {removed}"
    assert not root.exists(), f"re-created under a removed directory: {left[:6]}"
    assert problems == []
