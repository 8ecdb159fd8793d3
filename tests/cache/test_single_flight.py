"""Single flight across processes on one host (issue 12): processes sharing a disk tier
that miss the same key at once cause one read of the backing store.

The reads are counted at a real S3 server: moto in its own process, recording every
request it serves.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from swarmstore.cache import DiskTier
from swarmstore.testing import moto_server


def _miss(endpoint: str, bucket: str, cache: str, flag: str, ready: str, out: str) -> None:
    """One process: open the shared tier, wait for the flag, miss "c/0" with the others."""
    import asyncio

    import s3fs
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import FsspecStore

    from swarmstore.cache import TieredStore
    from swarmstore.testing import s3_storage_options

    fs = s3fs.S3FileSystem(
        **s3_storage_options(endpoint), asynchronous=True, skip_instance_cache=True
    )
    store = TieredStore(
        FsspecStore(fs, path=f"{bucket}/root"),
        memory_bytes=0,
        disk=DiskTier(cache, fsync=False),
    )
    store.disk.open()
    pathlib.Path(ready).touch()
    while not os.path.exists(flag):
        time.sleep(0.002)
    got = asyncio.run(store.get("c/0", default_buffer_prototype()))
    pathlib.Path(out).write_text(str(len(got.to_bytes())))
    store.close()


def _get_requests(endpoint: str, key: str) -> int:
    with urllib.request.urlopen(f"{endpoint}/moto-api/recorder/download-recording") as r:
        lines = r.read().decode().splitlines()
    reqs = [json.loads(line) for line in lines if line.strip()]
    return sum(1 for q in reqs if q["method"] == "GET" and q["url"].split("?")[0].endswith(key))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_eight_processes_missing_one_key_read_it_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(tmp_path / "recording"))
    with moto_server(process=True) as endpoint:
        bucket = endpoint.make_bucket()
        endpoint.filesystem().pipe(f"{bucket}/root/c/0", os.urandom(300_000))
        urllib.request.urlopen(
            urllib.request.Request(
                f"{endpoint.url}/moto-api/recorder/start-recording", method="POST"
            )
        ).close()
        # forkserver: the 8 processes fork from one that imported everything once
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["s3fs", "zarr", "swarmstore.cache", __name__])
        flag = tmp_path / "go"
        procs = [
            ctx.Process(
                target=_miss,
                args=(
                    endpoint.url,
                    bucket,
                    str(tmp_path / "cache"),
                    str(flag),
                    str(tmp_path / f"ready-{i}"),
                    str(tmp_path / f"out-{i}"),
                ),
            )
            for i in range(8)
        ]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 180
            while len(list(tmp_path.glob("ready-*"))) < 8:  # all open, waiting for the flag
                assert time.monotonic() < deadline and all(p.is_alive() for p in procs)
                time.sleep(0.02)
            flag.touch()  # now they all miss "c/0" together
            for p in procs:
                p.join(120)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        assert [p.exitcode for p in procs] == [0] * 8
        assert [(tmp_path / f"out-{i}").read_text() for i in range(8)] == ["300000"] * 8
        assert _get_requests(endpoint.url, "/root/c/0") == 1


_HOLDER = """
import os, signal, sys
from swarmstore.cache import DiskTier

tier = DiskTier(sys.argv[1], fsync=False)
claim, waited = tier.claim_sync("ns", "k", None)
assert claim is not None and not waited
print("holding", flush=True)
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
print("resumed", flush=True)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_dead_or_stopped_claim_holder_blocks_nobody(tmp_path: pathlib.Path, how: str) -> None:
    """A killed holder's claim is free at once (flock); a stopped one's is waited for only
    until the claim timeout, then the waiter fetches for itself."""
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "c"), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        if how == "SIGKILL":
            assert holder.wait(60) == -signal.SIGKILL
        else:  # wait until it is stopped, not merely about to be
            deadline = time.monotonic() + 60
            while _state(holder.pid) != "T":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        tier = DiskTier(tmp_path / "c", fsync=False, claim_timeout=0.3)
        claim, waited = tier.claim_sync("ns", "k", None)
        if how == "SIGKILL":
            assert claim is not None and not waited  # free: the kernel dropped the lock
            claim.release()
        else:
            assert claim is None and waited  # timed out: fetch without it
        tier.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()  # else a ResourceWarning when the Popen is collected


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_claims_of_two_tier_instances_exclude_each_other(tmp_path: pathlib.Path) -> None:
    """Two tier instances on one directory (as two processes): while the first holds the
    claim the second waits (here: until its timeout); released, it is the second's."""
    first = DiskTier(tmp_path / "c", fsync=False)
    second = DiskTier(tmp_path / "c", fsync=False, claim_timeout=0.2)
    claim, waited = first.claim_sync("ns", "k", None)
    assert claim is not None and not waited
    assert second.claim_sync("ns", "k", None) == (None, True)
    assert first.write("ns", "k", None, b"value")
    claim.release()
    claim2, waited2 = second.claim_sync("ns", "k", None)
    assert claim2 is not None and not waited2
    assert bytes(second.read("ns", "k", None).data) == b"value"
    claim2.release()
    first.close()
    second.close()
