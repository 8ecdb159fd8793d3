"""Checkpoints against Icechunk: the same zarr writes and reads, committed both ways.

Usage: ``python benchmarks/bench_checkpoint.py [--quick] [--case NAME ...] [--repeat N]``
(needs ``pip install 'swarmstore[bench]'`` for ``icechunk``; ``--case`` is one of
``local-large``, ``local-small``, ``s3-large``, ``s3-small``; ``--s3-client obstore`` or
``s3fs`` runs swarmstore over that client only on S3). Each side gets a fresh
repository per case; both sides run the same zarr code on the same arrays, in the same
process, alternating who goes first; each time is the median of the repeats:

- **full commit**: create the array in a session, write all of it, commit;
- **incremental commit**: a new session writes 1% of the chunks (scattered, the same
  chunks both sides), commits; time, and **bytes** the commit added to the store (counted
  the same way both sides: the growth of the directory or bucket);
- **restore read**: open the committed array read-only and read all of it (MB/s).

Cases: a local directory and S3 (moto in its own process), at 256 large chunks (float32,
256 KiB each; ``--quick`` the same) and at 100,489 small chunks (317 x 317 chunks of
32 x 32 uint8, 1 KiB each, 103 MB; above Icechunk's 512-byte inline threshold, so both
sides store every chunk as an object). ``--quick`` runs the 100k case on the local
directory only. Goals: every time <= 1.0x Icechunk's, bytes <= 1.1x.

On S3 swarmstore runs twice, against the same Icechunk runs: over zarr's ``ObjectStore``
on obstore's ``S3Store`` (a Rust client, as Icechunk's is) and over zarr's
``FsspecStore`` (s3fs, a Python client); both have the goals.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

sys.path.insert(0, os.path.dirname(__file__))
from _results import Line, emit

from swarmstore.checkpoint import CheckpointManager
from swarmstore.testing import moto_server


@dataclass
class Case:
    name: str
    shape: tuple[int, int]
    chunks: tuple[int, int]
    dtype: str

    def data(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        if self.dtype == "u1":
            return rng.integers(0, 256, self.shape, dtype="u1")
        return rng.random(self.shape, dtype=np.float32)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.shape[0] // self.chunks[0], self.shape[1] // self.chunks[1])


LARGE = Case("256 chunks of 256 KiB", (4096, 4096), (256, 256), "f4")
SMALL = Case("100,489 chunks of 1 KiB", (317 * 32, 317 * 32), (32, 32), "u1")


def changed_chunks(case: Case) -> list[tuple[int, int]]:
    """1% of the chunks, scattered (the same ones on both sides)."""
    rows, cols = case.grid
    n = max(1, round(rows * cols / 100))
    picks = np.random.default_rng(1).choice(rows * cols, n, replace=False)
    return [divmod(int(p), cols) for p in sorted(picks)]


def write_changes(arr: zarr.Array, case: Case, picks: list[tuple[int, int]]) -> None:
    r, c = case.chunks
    block = np.full(case.chunks, 7, dtype=case.dtype)
    for i, j in picks:
        arr[i * r : (i + 1) * r, j * c : (j + 1) * c] = block


class Side:
    """One system under test: open a repository, sessions, commits, reads."""

    name = ""

    def __init__(
        self, where: Callable[[str], Any], size: Callable[[str], int], name: str = "", via: str = ""
    ) -> None:
        self.where, self.size = where, size
        self.name = name or self.name
        #: the client, where the rows name it ("obstore", "s3fs")
        self.via = via

    def full(self, tag: str, case: Case, x: np.ndarray) -> None: ...
    def incremental(self, tag: str, case: Case, picks: list[tuple[int, int]]) -> None: ...
    def read(self, tag: str) -> np.ndarray: ...


class Swarm(Side):
    name = "swarmstore"

    def __init__(
        self, where: Callable[[str], Any], size: Callable[[str], int], name: str = "", via: str = ""
    ) -> None:
        super().__init__(where, size, name, via)
        self._mgrs: dict[str, CheckpointManager] = {}

    def _mgr(self, tag: str) -> CheckpointManager:
        # one manager per repository, as the Icechunk side keeps one Repository
        if tag not in self._mgrs:
            self._mgrs[tag] = CheckpointManager(self.where(f"swarm-{tag}"))
        return self._mgrs[tag]

    def full(self, tag, case, x):
        with self._mgr(tag).session() as s:
            zarr.create_array(s.store, name="x", shape=case.shape, chunks=case.chunks,
                              dtype=case.dtype)[:] = x  # fmt: skip
            s.commit(message="full")

    def incremental(self, tag, case, picks):
        with self._mgr(tag).session() as s:
            write_changes(zarr.open_array(s.store, path="x", mode="r+"), case, picks)
            s.commit(message="1%")

    def read(self, tag):
        return zarr.open_array(self._mgr(tag).open_store(), path="x", mode="r")[:]


class Ice(Side):
    name = "icechunk"

    def __init__(self, storage: Callable[[str], Any], size: Callable[[str], int]) -> None:
        super().__init__(storage, size)
        self._repos: dict[str, Any] = {}

    def _repo(self, tag: str) -> Any:
        import icechunk

        if tag not in self._repos:
            self._repos[tag] = icechunk.Repository.open_or_create(self.where(f"ice-{tag}"))
        return self._repos[tag]

    def full(self, tag, case, x):
        s = self._repo(tag).writable_session("main")
        zarr.create_array(s.store, name="x", shape=case.shape, chunks=case.chunks,
                          dtype=case.dtype)[:] = x  # fmt: skip
        s.commit("full")

    def incremental(self, tag, case, picks):
        s = self._repo(tag).writable_session("main")
        write_changes(zarr.open_array(s.store, path="x", mode="r+"), case, picks)
        s.commit("1%")

    def read(self, tag):
        s = self._repo(tag).readonly_session(branch="main")
        return zarr.open_array(s.store, path="x", mode="r")[:]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_one(side: Side, case: Case, x: np.ndarray, picks: list[tuple[int, int]]) -> dict:
    """Full commit, incremental commit (and the bytes it added), full read, on a fresh repo."""
    tag = uuid.uuid4().hex[:8]
    full = timed(lambda: side.full(tag, case, x))
    before = side.size(tag)
    inc = timed(lambda: side.incremental(tag, case, picks))
    grown = side.size(tag) - before
    out: dict[str, np.ndarray] = {}
    read = timed(lambda: out.update(x=side.read(tag)))
    expect = x.copy()
    write_changes(_Writable(expect), case, picks)
    assert np.array_equal(out["x"], expect), f"{side.name} read back wrong data"
    return {"full": full, "inc": inc, "read": read, "bytes": grown}


def run_case(where: str, case: Case, sides: list[Side], repeat: int) -> None:
    x = case.data()
    picks = changed_chunks(case)
    runs: dict[str, list[dict]] = {s.name: [] for s in sides}
    for i in range(repeat):
        for side in sides if i % 2 == 0 else sides[::-1]:  # alternate who goes first
            runs[side.name].append(run_one(side, case, x, picks))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    peer = med.pop("icechunk")
    for side in sides:
        if side.name in med:
            label = f"{where}{f' ({side.via})' if side.via else ''}, {case.name}"
            emit_rows(label, med[side.name], peer, x.nbytes / 1e6, len(picks))


def emit_rows(label: str, ours: dict, peer: dict, mb: float, changed: int) -> None:
    """The four rows of one case, each with its goal."""
    emit(Line("checkpoint", f"full commit, {label}", ours["full"], peer["full"], "icechunk",
              "s", "lower", 1.0))  # fmt: skip
    emit(Line("checkpoint", f"incremental commit (1% of chunks), {label}", ours["inc"],
              peer["inc"], "icechunk", "s", "lower", 1.0,
              notes=f"{changed} chunks changed"))  # fmt: skip
    emit(Line("checkpoint", f"incremental commit bytes (1% of chunks), {label}",
              ours["bytes"], peer["bytes"], "icechunk", "B", "lower", 1.1))  # fmt: skip
    emit(Line("checkpoint", f"restore read throughput, {label}", mb / ours["read"],
              mb / peer["read"], "icechunk", "MB/s", "higher", 1.0))  # fmt: skip


class _Writable:
    """A numpy array with zarr's ``arr[region] = block`` (the expected result)."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def __setitem__(self, key, value):
        self.a[key] = value


def local_sides(tmp: pathlib.Path) -> list[Side]:
    import icechunk

    def size(prefix: str) -> Callable[[str], int]:
        def measure(tag: str) -> int:
            root = tmp / f"{prefix}-{tag}"
            return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

        return measure

    return [
        Swarm(lambda name: zarr.storage.LocalStore(tmp / name), size("swarm")),
        Ice(lambda name: icechunk.local_filesystem_storage(str(tmp / name)), size("ice")),
    ]


def s3_sides(endpoint: Any, clients: tuple[str, ...] = ("obstore", "s3fs")) -> list[Side]:
    """Icechunk, and swarmstore over each S3 client named (``obstore``, ``s3fs``)."""
    import icechunk

    bucket = endpoint.make_bucket()
    fs = endpoint.filesystem(asynchronous=True)
    sync_fs = endpoint.filesystem()
    opts = endpoint.storage_options()

    def size(prefix: str) -> Callable[[str], int]:
        def measure(tag: str) -> int:
            sync_fs.invalidate_cache()
            found = sync_fs.find(f"{bucket}/{prefix}-{tag}", detail=True)
            return sum(int(info["size"]) for info in found.values())

        return measure

    def ice_storage(name: str) -> Any:
        return icechunk.s3_storage(
            bucket=bucket, prefix=name, endpoint_url=endpoint.url, allow_http=True,
            access_key_id=opts["key"], secret_access_key=opts["secret"], region="us-east-1",
            force_path_style=True,
        )  # fmt: skip

    sides = [
        Swarm(lambda name: endpoint.object_store(bucket, name), size("swarm"), via="obstore"),
        Ice(ice_storage, size("ice")),
        Swarm(
            lambda name: zarr.storage.FsspecStore(fs, path=f"{bucket}/s3fs-{name}"),
            size("s3fs-swarm"),
            name="swarmstore s3fs",
            via="s3fs",
        ),
    ]
    return [side for side in sides if not side.via or side.via in clients]


#: Every case, by the name ``--case`` takes: (where, case).
CASES = {
    "local-large": ("local dir", LARGE),
    "local-small": ("local dir", SMALL),
    "s3-large": ("S3 on moto", LARGE),
    "s3-small": ("S3 on moto", SMALL),
}


def chosen(args: argparse.Namespace) -> list[str]:
    """The cases to run: ``--case`` as given, else all but S3's 100k case with ``--quick``."""
    if args.case:
        return list(dict.fromkeys(args.case))
    return [name for name in CASES if not (args.quick and name == "s3-small")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="run only this case (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--repeat", type=int, help="repeats per case (default 3; --quick 1)")
    parser.add_argument("--s3-client", action="append", choices=["obstore", "s3fs"],
                        help="swarmstore's S3 client (repeatable; default: both)")  # fmt: skip
    args = parser.parse_args()
    try:
        import icechunk  # noqa: F401
    except ImportError:
        sys.exit("bench_checkpoint needs Icechunk: pip install 'swarmstore[bench]'")
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    names = chosen(args)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    try:
        for name in names:
            if CASES[name][0] == "local dir":
                run_case("local dir", CASES[name][1], local_sides(tmp), repeat)
        s3 = [CASES[n][1] for n in names if CASES[n][0] != "local dir"]
        if s3:
            with moto_server(process=True) as endpoint:
                for case in s3:
                    sides = s3_sides(endpoint, tuple(args.s3_client or ("obstore", "s3fs")))
                    run_case("S3 on moto", case, sides, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
