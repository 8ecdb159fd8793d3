"""``swarmstore demo``: every capability end to end on embedded defaults, with real figures.

Each section runs real parts (zarr arrays, a moto S3 server on 127.0.0.1 in its own
process, local directories) and records checks; the demo exits 0 only if every check
held. Sections are small functions taking the shared :class:`Demo` context.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table
from zarr.core.sync import sync

from swarmstore._demo_cluster import cluster_sections
from swarmstore._demo_context import Demo

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Demo", "run_demo"]


def _flip_on_disk(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same inode: the checksum xattr stays, the bytes rot


def storage_section(demo: Demo) -> None:
    """Replicated store over 3 local nodes + 1 S3 node: lose a node, rot a chunk, repair."""
    import zarr
    from zarr.storage import FsspecStore

    from swarmstore.storage import NodeSpec, ReplicatedStore

    demo.section = "storage"
    demo.console.rule("[bold]1. Storage: replicated, checksummed Zarr store")
    bucket = demo.s3.make_bucket("swarm-demo")
    nodes: list[Any] = [NodeSpec(f"file://{demo.root}/node{i}", zone=f"rack{i}") for i in range(3)]
    s3fs_async = demo.s3.filesystem(asynchronous=True)
    nodes.append(NodeSpec(FsspecStore(s3fs_async, path=f"{bucket}/node3"), zone="s3"))
    store = ReplicatedStore(nodes, replicas=3, write_quorum=2, state_dir=demo.root / "state")
    demo.facts["store"] = store
    data = np.random.default_rng(42).standard_normal((1024, 1024)).astype("f4")
    t0 = time.perf_counter()
    root = zarr.open_group(store, mode="w")
    arr = root.create_array("temperature", shape=data.shape, chunks=(128, 128), dtype="f4")
    arr[:] = data
    dt = time.perf_counter() - t0
    nchunks = 64
    demo.say(
        f"wrote {data.nbytes / 2**20:.1f} MiB as {nchunks} chunks, 3 replicas over "
        f"{len(nodes)} nodes (3 local dirs + S3 on moto) in {dt:.2f} s"
    )
    same = sync(_bytes_match(store, demo.root / "node0"))
    demo.check("node0 holds exactly the bytes zarr wrote, under zarr's own keys", same[0], same[1])

    _damage_and_repair(demo, store, data)
    sync(store.aclose())


def _damage_and_repair(demo: Demo, store: Any, data: np.ndarray) -> None:
    """Wipe a node, rot a replica; scrub finds both, reads stay exact, repair heals."""
    import zarr

    shutil.rmtree(demo.root / "node1")
    victim = next(
        k
        for k in (f"temperature/c/{i}/{j}" for i in range(8) for j in range(8))
        if (demo.root / "node2" / k).exists()
    )
    _flip_on_disk(demo.root / "node2" / victim)
    demo.say(f"wiped node1 entirely; flipped one byte of {victim} on node2")

    report = _run(store.scrub, demo, "scrub")
    demo.check(
        "scrub finds the damage",
        bool(not report.ok and report.missing and report.corrupt),
        f"{len(report.missing)} missing, {len(report.corrupt)} corrupt replicas",
    )
    back = zarr.open_array(store, path="temperature", mode="r")[:]
    demo.check("every chunk still reads back bit-exact", np.array_equal(back, data))
    sync(store.flush())
    fixed = _run(store.repair, demo, "repair")
    demo.say(f"repair wrote {fixed.copies_written} copies")
    after = _run(store.scrub, demo, "scrub")
    demo.check(
        "after repair every key has 3 verified replicas", after.ok, f"{after.healthy} healthy"
    )


async def _bytes_match(store: Any, node_dir: Path) -> tuple[bool, str]:
    from zarr.core.buffer import default_buffer_prototype

    files = await asyncio.to_thread(lambda: [p for p in node_dir.rglob("*") if p.is_file()])
    for path in files:
        key = path.relative_to(node_dir).as_posix()
        got = await store.get(key, default_buffer_prototype())
        if got is None or got.to_bytes() != path.read_bytes():
            return False, f"{key} differs"
    return bool(files), f"{len(files)} files compared"


def _run(method: Callable[..., Any], demo: Demo, label: str) -> Any:
    with demo.progress(label) as cb:  # the callback brings the total
        return sync(method(progress=cb))


_CRASH_WRITER = """
import sys, numpy as np
from swarmstore.checkpoint import CheckpointManager
from swarmstore.storage import ReplicatedStore
nodes, state = sys.argv[1].split(","), sys.argv[2]
mgr = CheckpointManager(ReplicatedStore(nodes, replicas=2, state_dir=state))
big = np.random.default_rng(3).random((4096, 4096), dtype="f4")
print("saving", flush=True)
mgr.save({"weights": big}, step=2, encoding={"weights": {"chunks": (128, 128)}})
print("saved", flush=True)
"""


def checkpoint_section(demo: Demo) -> None:
    """Save, save incrementally, kill -9 a writer mid-save, restore the last good step."""
    from swarmstore.checkpoint import CheckpointManager
    from swarmstore.storage import ReplicatedStore

    demo.section = "checkpoint"
    demo.console.rule("[bold]5. Checkpoints: atomic, incremental, survive a crash")
    nodes = [f"file://{demo.root}/ckpt{i}" for i in range(3)]
    store = ReplicatedStore(nodes, replicas=2, state_dir=demo.root / "ckpt-state")
    weights = _checkpoint_incremental(demo, CheckpointManager(store, keep_last=5))
    _checkpoint_crash(demo, nodes)
    after = CheckpointManager(store)
    steps = [info.step for info in after.list()]
    demo.check("only complete checkpoints are visible", steps == [0, 1], f"steps {steps}")
    restored = after.restore()
    demo.check("restore returns step 1 bit-exact", np.array_equal(restored["weights"][:], weights))
    gc = after.collect_garbage()
    demo.say(
        f"garbage collection deleted {gc.deleted_objects} objects "
        "(a crashed save's objects are kept until its lease expires)"
    )
    demo.check(
        "after GC every kept checkpoint still verifies", all(after.verify_step(s) for s in steps)
    )
    shutil.rmtree(demo.root / "ckpt0")  # R=2: losing R-1 = 1 node loses no checkpoint
    survivor = CheckpointManager(
        ReplicatedStore(nodes, replicas=2, state_dir=demo.root / "ckpt-state-2")
    )
    back = survivor.restore()
    demo.check(
        "with node ckpt0 gone, step 1 still restores bit-exact",
        np.array_equal(back["weights"][:], weights),
    )


def _checkpoint_incremental(demo: Demo, mgr: Any) -> np.ndarray:
    """Steps 0 and 1 (one chunk of 64 changed); the weights as step 1 saved them."""
    weights = np.random.default_rng(1).random((1024, 1024), dtype="f4")
    enc = {"weights": {"chunks": (128, 128)}}
    first = mgr.save({"weights": weights}, step=0, metadata={"loss": 0.9}, encoding=enc)
    weights[:128, :128] += 1.0  # one chunk of 64 changes
    second = mgr.save({"weights": weights}, step=1, metadata={"loss": 0.7}, encoding=enc)
    ratio = second.written_bytes / first.written_bytes
    demo.say(
        f"step 0 wrote {first.written_bytes / 2**20:.2f} MiB; step 1 (1 of 64 chunks changed) "
        f"wrote {second.written_bytes / 2**10:.0f} KiB, reused {second.reused_objects} objects"
    )
    demo.check(
        "the incremental checkpoint writes <= 2% of a full one", ratio <= 0.02, f"{ratio:.2%}"
    )
    return weights


def _checkpoint_crash(demo: Demo, nodes: list[str]) -> None:
    """A writer in another process is killed (kill -9) while it saves step 2."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, ",".join(nodes), str(demo.root / "ckpt-state")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    started = child.stdout.readline().strip() == "saving"
    time.sleep(0.3)
    child.kill()
    child.wait()
    child.stdout.close()
    demo.say(f"killed a writer (kill -9) {'during' if started else 'before'} its save of step 2")


_READER = """
import json, sys, numpy as np, zarr
from swarmstore.storage import ReplicatedStore
from swarmstore import _sync
nodes, state, opts = sys.argv[1].split(","), sys.argv[2], json.loads(sys.argv[3])
store = ReplicatedStore(nodes, replicas=3, write_quorum=2, state_dir=state, storage_options=opts)
arr = zarr.open_array(store, path="shared", mode="r")[:]
print(json.dumps({"shape": list(arr.shape), "ones": int((arr == 1).sum())}), flush=True)
_sync.run(store.aclose())
"""


def hosts_section(demo: Demo) -> None:
    """A write on host A while an S3 node is down; host B (its own process and state dir)
    reads after the node is back, stale replica and all, and gets the new bytes."""
    import json
    import subprocess
    import sys

    import zarr

    from swarmstore import _sync
    from swarmstore.storage import ReplicatedStore
    from swarmstore.testing.proxy import Proxy

    demo.section = "hosts"
    demo.console.rule("[bold]6. One truth on every host: a write during an outage, read elsewhere")
    bucket = demo.s3.make_bucket("swarm-demo-hosts")
    fast_fail = {"retries": {"max_attempts": 1}, "connect_timeout": 1}
    with Proxy(demo.s3.url, name="s3-node") as link:
        opts = {**demo.s3.storage_options(), "endpoint_url": link.url, "config_kwargs": fast_fail}
        nodes = [f"file://{demo.root}/hosts-n0", f"file://{demo.root}/hosts-n1",
                 f"s3://{bucket}/n2"]  # fmt: skip
        a = ReplicatedStore(nodes, replicas=3, write_quorum=2, state_dir=demo.root / "host-a",
                            storage_options=opts, create=True)  # fmt: skip
        arr = zarr.create_array(a, name="shared", shape=(256, 256), chunks=(64, 64), dtype="i4")
        arr[:] = 0
        link.kill()  # the S3 node is unreachable from here on
        arr[:] = 1  # acknowledged by the two local nodes (W=2)
        demo.say(f"host A wrote 16 chunks with the S3 node down ({link.counters.refused} refused)")
        link.revive()  # back, holding the old chunks
        reader = subprocess.run(
            [sys.executable, "-c", _READER, ",".join(nodes), str(demo.root / "host-b"),
             json.dumps(opts)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        _sync.run(a.aclose())
    got = json.loads(reader.stdout.strip().splitlines()[-1]) if reader.returncode == 0 else {}
    demo.check(
        "host B, with its own state, reads every new value (no stale chunk)",
        got.get("ones") == 256 * 256,
        f"{got.get('ones', 0)} of {256 * 256} values new" if got else reader.stderr[-300:],
    )


SECTIONS: list[Callable[[Demo], None]] = [
    storage_section,
    cluster_sections,
    checkpoint_section,
    hosts_section,
]


def run_demo(workdir: str | None = None, keep: bool = False) -> int:
    """Run every section; print a summary; return the process exit code."""
    from swarmstore.testing import moto_server

    console = Console(highlight=False)
    root = Path(workdir or tempfile.mkdtemp(prefix="swarmstore-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    console.print(f"[bold]swarmstore demo[/bold]  (work dir {root})")
    try:
        with moto_server(process=True) as s3:
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            demo = Demo(root=root, console=console, s3=s3)
            for section in SECTIONS:
                started = time.perf_counter()
                try:
                    section(demo)
                except Exception as e:  # a crashed section is a failed check, and we go on
                    demo.check(f"{section.__name__} ran to the end", False, repr(e))
                demo.say(f"[dim]({time.perf_counter() - started:.1f} s)[/dim]")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    table = Table(title="swarmstore demo: checks")
    for col in ("section", "check", "result"):
        table.add_column(col)
    for c in demo.checks:
        table.add_row(c.section, c.what, "[green]ok[/green]" if c.ok else "[red]FAILED[/red]")
    console.print(table)
    verdict = "[green]all checks held[/green]" if demo.ok else "[red]some checks FAILED[/red]"
    console.print(f"{verdict} in {time.perf_counter() - t0:.1f} s")
    return 0 if demo.ok else 1
