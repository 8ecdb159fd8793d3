"""DiskTier: the local-disk tier, bounded by bytes, shared safely by threads and processes."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import time
import weakref
from typing import TYPE_CHECKING, Any

import swarmstore.cache._diskformat as fmt
from swarmstore import _clock, config
from swarmstore.cache._diskengine import Engine
from swarmstore.cache._diskfill import Fill
from swarmstore.cache._disklocks import Backoff, Claim, DirLock
from swarmstore.cache._tier import Entry, SyncTier

if TYPE_CHECKING:
    from swarmstore.cache._span import Span

__all__ = ["DiskTier"]


class DiskTier(SyncTier):
    """Keep copies of values in files under ``path``, least recently used leaving first.

    Parameters
    ----------
    path : str or os.PathLike
        Cache directory. Several processes on one host (say two Dask workers) may share it.
    max_bytes : int or str, optional
        Bound on everything the tier puts on disk: files, temp files of fills being
        written, and its index. Default: config ``swarmstore.cache.disk-bytes``.
    fsync : bool, optional
        Fsync each file before renaming it into place. Default: ``swarmstore.cache.disk-fsync``.
    pending_bytes : int or str, optional
        Bytes of background fills in flight; beyond it fills are skipped rather than
        slowing reads down. Default: ``swarmstore.cache.disk-pending-bytes``.
    claim_timeout : float or str, optional
        How long a process waits for another that is fetching the same value (single
        flight across processes) before fetching it itself. Default:
        ``swarmstore.cache.disk-claim-timeout``.

    Notes
    -----
    One self-describing, self-checking file per value (``_diskformat``): a file is
    written to a temp name, fsynced and renamed into place, so readers see a whole old
    file or a whole new one; a reader verifies the header and the blocks it returns, and
    a file that fails is deleted and refetched, never returned. An SQLite index holds
    sizes, access order (a counter) and per-key generations (``_diskindex``); the
    directory lock orders publishing and invalidation across processes (``_disklocks``),
    so a fill that began before an invalidation of its key is never published, whatever
    the hosts' clocks say, and a process killed at any point leaves nothing stale.

    A hit never touches the index (access times are written about once a second by the
    fill thread). Resources (index connection, fill thread, lock fds) are released by
    :meth:`close` or when the tier is garbage-collected.

    Examples
    --------
    >>> import tempfile
    >>> tier = DiskTier(tempfile.mkdtemp(), max_bytes=2**20, fsync=False)
    >>> tier.write("ns", "c/0", None, b"abc")
    True
    >>> bytes(tier.read("ns", "c/0", ("r", 1, 3)).data)
    b'bc'
    >>> tier.close()
    """

    name = "disk"
    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int | str | None = None,
        *,
        fsync: bool | None = None,
        pending_bytes: int | str | None = None,
        claim_timeout: float | str | None = None,
    ) -> None:
        self.path = pathlib.Path(path).expanduser().absolute()
        self.max_bytes = int(config.value("cache.disk-bytes", max_bytes))
        self.fsync = bool(config.value("cache.disk-fsync", fsync))
        self.pending_limit = int(config.value("cache.disk-pending-bytes", pending_bytes))
        self.claim_timeout = float(config.value("cache.disk-claim-timeout", claim_timeout))
        self._engine = Engine(self.path, self.max_bytes, self.fsync, self.pending_limit)
        self._finalizer = weakref.finalize(self, self._engine.close, flush=False)

    # -- identity -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"DiskTier({str(self.path)!r}, max_bytes={self.max_bytes})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DiskTier)
            and self.path == other.path
            and self.max_bytes == other.max_bytes
        )

    def __hash__(self) -> int:
        return hash((self.path, self.max_bytes))

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "max_bytes": self.max_bytes,
            "fsync": self.fsync,
            "pending_bytes": self.pending_limit,
            "claim_timeout": self.claim_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- the tier protocol --------------------------------------------------------------

    def open(self) -> None:
        """Open the directory now (else on first use): creates it, rebuilds a lost index."""
        self._engine.ensure_open(foreground=True)

    def ticket(self, ns: str, key: str) -> Any:
        return self._engine.ticket(ns, key)

    def get_sync(self, ns: str, key: str, span: Span) -> Entry | None:
        return self._engine.read(ns, key, span)

    async def get(self, ns: str, key: str, span: Span) -> Entry | None:
        engine = self._engine
        if not engine.might_have(ns, key, span):  # one stat: a cold miss skips the thread hop
            engine.misses += 1
            return None
        # run_in_executor, not to_thread: a hit need not copy the context
        return await asyncio.get_running_loop().run_in_executor(None, engine.read, ns, key, span)

    def put_sync(
        self, ns: str, key: str, span: Span, entry: Entry, ticket: Any, claim: Claim | None = None
    ) -> bool:
        """Queue a fill (written in the background); ``claim`` is released once it is on disk."""
        fill = Fill(ns, key, span, entry.data, entry.filled_at, entry.token, ticket, claim)
        return self._engine.fills.submit(fill)

    async def put(
        self, ns: str, key: str, span: Span, entry: Entry, ticket: Any, claim: Claim | None = None
    ) -> bool:
        return self.put_sync(ns, key, span, entry, ticket, claim)

    def evict_sync(self, ns: str, key: str, *, prefix: bool = False) -> None:
        self._engine.invalidate(ns, key, prefix)

    def evict_later(self, ns: str, key: str, *, prefix: bool = False) -> None:
        """Evict in the background; reads of the key miss until it is done (never blocks)."""
        self._engine.defer(ns, key, prefix)

    def stats(self) -> dict[str, int]:
        """Counters of this process, and the shared totals of the directory."""
        e = self._engine
        total = entries = 0
        try:
            if e.ensure_open(foreground=True):
                total, entries = e.index.totals()
        except (OSError, sqlite3.Error) as err:
            e.warn(f"disk cache index at {self.path} is unreadable ({err})")
        space = e.space
        return {
            "hits": e.hits,
            "misses": e.misses,
            "bytes": total,
            "entries": entries,
            "evictions": space.evictions if space is not None else 0,
            "corrupt": e.corrupt,
            "errors": e.errors + e.publisher.errors,
            "skipped": e.fills.skipped,
            "cut": e.publisher.cut,
            "writes": e.publisher.writes,
            "reclaimed_temp_files": space.reclaimed if space is not None else 0,
            "index_restarts": e.restarts,
            "max_bytes": self.max_bytes,
        }

    def flush(self, timeout: float | None = None) -> None:
        """Wait for background fills and deferred invalidations; write access times."""
        self._engine.fills.want_housekeeping()
        self._engine.fills.flush(timeout)
        self._engine.raise_warnings()

    def close(self) -> None:
        """Flush, then release the index, the fill thread and the locks (reopened on use)."""
        self._engine.close()

    # -- single flight across processes -------------------------------------------------

    def claim_sync(self, ns: str, key: str, span: Span) -> tuple[Claim | None, bool]:
        """``(claim, waited)``: the claim on the entry, waiting while another process holds
        it (then ``waited``: look again before fetching); ``(None, True)`` on timeout."""
        name = fmt.name_of(ns, key, span)
        backoff = Backoff(self.claim_timeout)
        waited = False
        while (claim := self._try_claim(name)) is None:
            delay = backoff.next()
            if delay is None:
                return None, True
            waited = True
            time.sleep(delay)
        return claim, waited

    async def claim(self, ns: str, key: str, span: Span) -> tuple[Claim | None, bool]:
        """:meth:`claim_sync` for the event loop (it polls; it never blocks the loop)."""
        name = fmt.name_of(ns, key, span)
        backoff = Backoff(self.claim_timeout)
        waited = False
        while (claim := self._try_claim(name)) is None:
            delay = backoff.next()
            if delay is None:
                return None, True
            waited = True
            await asyncio.sleep(delay)
        return claim, waited

    def _try_claim(self, name: str) -> Claim | None:
        try:
            if not self._engine.ensure_open(foreground=True):
                return _NO_CLAIM  # no usable directory: fetch without waiting for anyone
            return self._engine.claims.try_take(name)
        except OSError as e:
            self._engine.warn(f"disk cache claims in {self.path} failed ({e})")
            return _NO_CLAIM

    # -- direct use (tests, tools) ------------------------------------------------------

    def read(self, ns: str, key: str, span: Span) -> Entry | None:
        """The cached bytes of ``(key, span)`` (from a whole-value file if there is one)."""
        return self._engine.read(ns, key, span)

    def write(
        self,
        ns: str,
        key: str,
        span: Span,
        data: bytes | None,
        *,
        ticket: Any = None,
        token: str | None = None,
    ) -> bool:
        """Store a copy of ``data`` now (None: remember the key as absent).

        ``ticket`` (from :meth:`ticket`, taken before ``data`` was fetched) drops the
        write if the key was invalidated since; None takes one now. False when dropped
        or larger than the bound.
        """
        ticket = self.ticket(ns, key) if ticket is None else ticket
        fill = Fill(ns, key, span, data, _clock.wall(), token, ticket)
        self._engine.publisher.publish([fill], foreground=True)
        return fill.done

    def submit(self, ns: str, key: str, span: Span, data: bytes | None, *, ticket: Any) -> None:
        """:meth:`write` in the background."""
        self._engine.fills.submit(Fill(ns, key, span, data, _clock.wall(), None, ticket))

    def invalidate(self, ns: str, key: str) -> None:
        """Drop every file of ``key`` and void tickets taken before now."""
        self._engine.invalidate(ns, key, False)

    def invalidate_prefix(self, ns: str, prefix: str) -> None:
        """:meth:`invalidate` every key starting with ``prefix``."""
        self._engine.invalidate(ns, prefix, True)

    def clear(self) -> None:
        """Drop every file (of every namespace) and void every ticket."""
        e = self._engine
        e.invalidate("*", "", True)  # every key of every store: readers drop what is left
        with e.locked(foreground=True) as db:
            rows = db.execute("SELECT name, size FROM entries").fetchall()
            for name, _ in rows:
                e.unlink(name)
            e.index.delete(db, rows)

    def disk_usage(self) -> int:
        """Bytes of everything under ``path``: files, temp files and the index.

        One snapshot, comparable with the bound: walked under the directory lock, so no
        fill is renamed from ``tmp/`` into ``data/`` (it would count twice) and no entry
        is evicted to make room for a new temp file (both would count) during the walk.
        """
        return disk_usage(self.path)


def disk_usage(path: pathlib.Path) -> int:
    """:meth:`DiskTier.disk_usage` of the cache directory ``path``, for a sampler that
    holds no DiskTier (a benchmark, a test watching another process's tier)."""
    try:
        lock = DirLock(str(path / "data"))
    except FileNotFoundError:
        return _bytes_under(path)
    try:
        with lock.held():
            return _bytes_under(path)
    finally:
        lock.close()


def _bytes_under(path: pathlib.Path) -> int:
    """Bytes of the files under ``path``, each counted once (by inode)."""
    sizes: dict[tuple[int, int], int] = {}
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                st = os.stat(os.path.join(root, fn))
            except FileNotFoundError:
                continue
            sizes[st.st_dev, st.st_ino] = st.st_size
    return sum(sizes.values())


class _NoClaim:
    """Claims are broken (the directory is unusable): fetch without one."""

    def release(self) -> None:
        pass


_NO_CLAIM: Any = _NoClaim()
