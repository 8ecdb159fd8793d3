"""Durable results: safe storage formats, integrity, deterministic tokens, reuse across runs."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import textwrap

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask import delayed
from distributed.utils_test import gen_cluster
from zarr.storage import LocalStore

from swarmstore.compute.durable import ResultStore, durable, graph_tokens
from swarmstore.errors import ConfigError, CorruptResultError

CALLS: list[int] = []


def expensive(x: int) -> np.ndarray:
    CALLS.append(x)
    return np.arange(x, dtype="float64") * 2


def total(a: np.ndarray) -> float:
    return float(a.sum())


class Opaque:
    """A value JSON cannot hold: needs pickle."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.v == self.v

    __hash__ = None  # type: ignore[assignment]


def _chunk_files(root: pathlib.Path, token: str) -> list[pathlib.Path]:
    return [
        p
        for p in (root / "swarm-results" / token).rglob("*")
        if p.is_file() and p.name != "zarr.json"
    ]


# ------------------------------------------------------------------ ResultStore
@pytest.mark.parametrize(
    "value",
    [
        np.arange(10, dtype="int32").reshape(2, 5),
        np.linspace(0, 1, 7),
        np.array([True, False]),
        b"\x00raw bytes\xff",
        {"a": [1, 2.5, None], "b": "text"},
        [1, 2, 3],
        42,
        "hello",
        np.float64(2.5),  # x.sum() of a float array (issue 11 item 26)
        np.int64(-7),
        np.float32(0.25),
        np.bool_(True),
        np.complex128(1 + 2j),
    ],
)
def test_round_trips_without_pickle(tmp_path, value):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t1", value)
    got = results.load("t1")
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(got, value)
        assert got.dtype == value.dtype
    else:
        assert got == value and type(got) is type(value)


def test_values_needing_pickle_are_refused_unless_opted_in(tmp_path):
    plain = ResultStore(LocalStore(tmp_path))
    with pytest.raises(TypeError, match="allow_pickle=True"):
        plain.save("t", Opaque(1))
    with pytest.raises(TypeError, match="allow_pickle"):
        plain.save("t", (1, 2))  # a tuple would come back as a list: not exact, so refused
    trusting = ResultStore(LocalStore(tmp_path), allow_pickle=True)
    trusting.save("t", Opaque(1))
    assert trusting.load("t") == Opaque(1)
    # a reader that did not opt in never unpickles, whoever wrote it
    with pytest.raises(PermissionError, match="refusing to unpickle"):
        plain.load("t")
    assert plain.contains("t") is False
    assert trusting.contains("t") is True


def test_a_scalar_result_of_a_reduction_is_persisted_without_pickle(tmp_path):
    """``durable(x.sum())`` stores the numpy scalar as a 0-d array and reuses it."""
    results = ResultStore(LocalStore(tmp_path))  # allow_pickle off
    x = da.arange(10, chunks=5, dtype="int64")
    assert durable(x.sum(), results).compute() == 45
    reused = []
    job = durable(x.sum(), results, on_reuse=lambda k, t: reused.append(t))
    got = job.compute()
    assert reused and got == 45 and isinstance(got, np.integer)
    arr = zarr.open_array(LocalStore(tmp_path), path=f"swarm-results/{reused[0]}", mode="r")
    assert arr.shape == () and arr.attrs["swarmstore-result"]["format"] == "scalar"


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "ran"))


@pytest.mark.parametrize("value", ["no", "off", "disabled", "False", "false", "0", 0, "yes"])
def test_allow_pickle_is_a_strict_boolean(tmp_path, value):
    """Issue 11 item 11: no string (nor 0) ever enables unpickling a crafted result."""
    marker = tmp_path / "ran"
    ResultStore(LocalStore(tmp_path / "r"), allow_pickle=True).save("t", Payload(str(marker)))
    assert not marker.exists()  # pickling does not run it; unpickling would
    # refused as config ("no", "off", 0 ...), or read as the boolean it spells ("False")
    refused = (ConfigError, PermissionError)
    with dask.config.set({"swarmstore.replication.allow-pickle": value}):
        with pytest.raises(refused, match=r"allow-pickle|refusing to unpickle"):
            ResultStore(LocalStore(tmp_path / "r")).load("t")
    with pytest.raises(refused, match=r"allow-pickle|refusing to unpickle"):
        ResultStore(LocalStore(tmp_path / "r"), allow_pickle=value).load("t")
    with pytest.raises(PermissionError, match="refusing to unpickle"):
        ResultStore(LocalStore(tmp_path / "r")).load("t")
    assert not marker.exists()


def test_allow_pickle_from_the_environment_is_strict(tmp_path):
    marker = tmp_path / "ran"
    ResultStore(LocalStore(tmp_path / "r"), allow_pickle=True).save("t", Payload(str(marker)))
    assert not marker.exists()
    script = textwrap.dedent(f"""
        from zarr.storage import LocalStore
        from swarmstore.compute.durable import ResultStore
        from swarmstore.errors import ConfigError
        try:
            ResultStore(LocalStore({str(tmp_path / "r")!r})).load("t")
        except (ConfigError, PermissionError) as e:
            print("refused:", e)
    """)
    for value in ("no", "off", "False"):
        env = {**__import__("os").environ, "DASK_SWARMSTORE__REPLICATION__ALLOW_PICKLE": value}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert "refused:" in out.stdout, out.stderr
    assert not marker.exists()


def test_allow_pickle_comes_from_config(tmp_path):
    with dask.config.set({"swarmstore.replication.allow-pickle": True}):
        assert ResultStore(LocalStore(tmp_path)).allow_pickle is True
    assert ResultStore(LocalStore(tmp_path)).allow_pickle is False


def test_missing_and_incomplete_results_are_absent(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    with pytest.raises(KeyError):
        results.load("nothing")
    # a crash between data and checksum leaves the array without its completion record
    results.save("t", np.arange(4))
    arr = zarr.open_array(LocalStore(tmp_path), path="swarm-results/t", mode="r+")
    arr.attrs.put({"swarmstore-result": {"complete": False}})
    assert results.contains("t") is False
    with pytest.raises(KeyError):
        results.load("t")


def test_corrupt_chunk_is_detected(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t", np.arange(1000, dtype="int64"))
    [chunk] = _chunk_files(tmp_path, "t")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptResultError):
        results.load("t")
    assert results.contains("t") is False


def test_truncated_chunk_is_detected(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t", b"x" * 5000)
    [chunk] = _chunk_files(tmp_path, "t")
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(CorruptResultError):
        results.load("t")


def test_valid_zarr_but_wrong_bytes_fail_the_checksum(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t", np.zeros(8))
    arr = zarr.open_array(LocalStore(tmp_path), path="swarm-results/t", mode="r+")
    arr[3] = 99.0  # decodes fine: only the xxh3 record can tell
    with pytest.raises(CorruptResultError, match="xxh3"):
        results.load("t")


def test_corrupt_metadata_is_detected(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t", 1)
    (tmp_path / "swarm-results" / "t" / "zarr.json").write_text("{not json")
    with pytest.raises(CorruptResultError, match="metadata"):
        results.load("t")


def test_bad_tokens_and_prefixes_are_refused(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    with pytest.raises(ValueError, match="alphanumeric"):
        results.save("../escape", 1)
    with pytest.raises(ConfigError, match="relative path"):
        ResultStore(LocalStore(tmp_path), prefix="../up")


def test_plain_zarr_reads_the_result_tree(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    results.save("t", np.arange(3))
    group = zarr.open_group(LocalStore(tmp_path), path="swarm-results", mode="r")
    assert [name for name, _ in group.members()] == ["t"]


async def test_async_api_over_s3(s3_store):
    results = ResultStore(s3_store)
    assert await results.set("t", np.arange(5)) == "ndarray"
    np.testing.assert_array_equal(await results.get("t"), np.arange(5))
    assert await results.verify("t")
    assert not await results.verify("other")


def test_over_replicated_store(tmp_path):
    from swarmstore.storage import ReplicatedStore

    store = ReplicatedStore([f"file://{tmp_path}/n{i}" for i in range(3)], replicas=2)
    results = ResultStore(store)
    results.save("t", {"k": 1})
    assert results.load("t") == {"k": 1}


# ------------------------------------------------------------------ tokens
def _graph(x: int, fn=expensive):
    a = delayed(fn, pure=False)(x)  # random key names: tokens must not depend on them
    with dask.annotate(swarm={"persist": True}):
        b = delayed(total, pure=False)(a)
    return b


def test_tokens_ignore_random_keys_and_follow_inputs():
    t1 = graph_tokens(dict(_graph(5).__dask_graph__()))
    t2 = graph_tokens(dict(_graph(5).__dask_graph__()))
    t3 = graph_tokens(dict(_graph(6).__dask_graph__()))
    assert sorted(t1.values()) == sorted(t2.values())
    assert not set(t1.values()) & set(t3.values())


def test_tokens_follow_function_code():
    def variant_a(x):
        return np.arange(x) * 2

    def variant_b(x):
        return np.arange(x) * 3

    variant_b.__name__ = variant_b.__qualname__ = variant_a.__qualname__
    ta = graph_tokens(dict(_graph(5, variant_a).__dask_graph__()))
    tb = graph_tokens(dict(_graph(5, variant_b).__dask_graph__()))
    assert set(ta.values()) != set(tb.values())


def test_tokens_follow_an_edited_module_function(monkeypatch):
    """A module-level function pickles by reference (module + name): only its bytecode
    tells an edited body apart, as after editing the file between two runs."""

    def edited(x):
        return np.arange(x) * 3

    before = graph_tokens(dict(_graph(5).__dask_graph__()))
    monkeypatch.setattr(expensive, "__code__", edited.__code__)
    after = graph_tokens(dict(_graph(5).__dask_graph__()))
    assert not set(before.values()) & set(after.values())


# ------------------------------------------------------------------ graph rewrite
def test_second_run_reuses_and_skips_upstream(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    CALLS.clear()
    first = durable(_graph(5), results)
    assert dask.compute(first, scheduler="sync")[0] == 20.0
    assert CALLS == [5]
    reused: list[str] = []
    second = durable(_graph(5), results, on_reuse=lambda k, t: reused.append(t))
    assert dask.compute(second, scheduler="sync")[0] == 20.0
    assert CALLS == [5], "upstream ran again"
    assert len(reused) == 1
    # changed input: fresh computation
    assert durable(_graph(6), results).compute(scheduler="sync") == 30.0
    assert CALLS == [5, 6]


def test_corrupt_stored_result_is_recomputed(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    CALLS.clear()
    durable(_graph(5), results).compute(scheduler="sync")
    [token] = [p.name for p in (tmp_path / "swarm-results").iterdir() if p.is_dir()]
    arr = zarr.open_array(LocalStore(tmp_path), path=f"swarm-results/{token}", mode="r+")
    arr[:] = np.frombuffer(b"66.0", dtype="uint8")  # a wrong answer, well-formed
    assert durable(_graph(5), results).compute(scheduler="sync") == 20.0
    assert CALLS == [5, 5]
    assert results.load(token) == 20.0  # and the good value was written back


def test_unannotated_collection_persists_its_outputs(tmp_path):
    results = ResultStore(LocalStore(tmp_path))
    x = da.arange(12, chunks=4) * 2
    np.testing.assert_array_equal(durable(x, results).compute(scheduler="sync"), x.compute())
    reused: list[str] = []
    y = durable(da.arange(12, chunks=4) * 2, results, on_reuse=lambda k, t: reused.append(k))
    assert len(reused) == 3
    assert len(dict(y.__dask_graph__())) == 3  # only the three load tasks remain
    np.testing.assert_array_equal(y.compute(scheduler="sync"), np.arange(12) * 2)


def test_durable_needs_a_store():
    with pytest.raises(ConfigError, match="result-store"):
        durable(_graph(1))


def test_store_from_config_url(tmp_path):
    with dask.config.set({"swarmstore.replication.result-store": f"file://{tmp_path}"}):
        assert durable(_graph(3)).compute(scheduler="sync") == 6.0
    assert (tmp_path / "swarm-results").is_dir()


@gen_cluster(client=True, nthreads=[("", 1)] * 2)
async def test_durable_on_a_cluster_keeps_annotations(c, s, a, b):
    with tempfile.TemporaryDirectory() as root:
        results = ResultStore(LocalStore(root))  # shipped to workers inside the tasks
        CALLS.clear()
        with dask.annotate(swarm={"persist": True, "critical": True}):
            x = delayed(expensive, pure=False)(4)
        fut = c.compute(durable(x, results))
        np.testing.assert_array_equal(await fut, np.arange(4) * 2.0)
        assert s.tasks[fut.key].annotations["swarm"]["critical"] is True
        # a new graph (new random keys), unannotated: its output has the same token
        fut2 = c.compute(durable(delayed(expensive, pure=False)(4), results))
        np.testing.assert_array_equal(await fut2, np.arange(4) * 2.0)
        assert CALLS == [4]


# ------------------------------------------------------------------ two cluster processes
SCRIPT = textwrap.dedent(
    """
    import sys, pathlib
    import dask
    import numpy as np
    from dask import delayed
    from distributed import Client, LocalCluster
    from swarmstore.compute.durable import durable

    def expensive(x, marker):
        with open(marker, "a") as f:
            f.write("computed\\n")
        return np.arange(x, dtype="float64")

    def total(a):
        return float(a.sum())

    if __name__ == "__main__":
        root, marker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        with dask.config.set({"swarmstore.replication.result-store": root}):
            a = delayed(expensive, pure=False)(n, marker)
            with dask.annotate(swarm={"persist": True}):
                b = delayed(total, pure=False)(a)
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                print(client.compute(durable(b)).result())
    """
)


@pytest.mark.slow
def test_reuse_across_two_cluster_processes(tmp_path):
    """Two OS processes, each with its own scheduler and worker, share only the store."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "marker"
    root = f"file://{tmp_path / 'results'}"

    def run(n: int) -> str:
        out = subprocess.run(
            [sys.executable, str(script), root, str(marker), str(n)],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    assert run(10) == "45.0"
    assert marker.read_text().count("computed") == 1
    assert run(10) == "45.0"
    assert marker.read_text().count("computed") == 1, "second cluster recomputed"


def test_unstorable_result_is_still_returned(tmp_path, caplog):
    results = ResultStore(LocalStore(tmp_path))
    with dask.annotate(swarm={"persist": True}):
        job = delayed(Opaque, pure=True)(3)
    with caplog.at_level("WARNING", logger="swarmstore.compute.durable"):
        assert durable(job, results).compute(scheduler="sync") == Opaque(3)
    assert "not persisted" in caplog.text
    assert not (tmp_path / "swarm-results").exists() or not any(
        (tmp_path / "swarm-results").glob("*/zarr.json")
    )
