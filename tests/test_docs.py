"""README.md and docs/*.md agree with the code: their Python blocks run, their tables are generated.

Snippets: every ```` ```python ```` block runs, in a temp directory, with top-level
``await`` allowed (under ``asyncio.run``, as a script would). A comment line right above a
block directs the runner:

- ``<!-- snippet: skip: <why> -->``: not run (the reason is required);
- ``<!-- snippet: setup: a, b -->``: run after the named setups below, which provide real
  parts under the names the prose uses (``client``, ``backing``, ``store``, an S3 endpoint
  at ``s3://bucket``);
- ``<!-- snippet: continue -->``: run in the namespace of the block before it.

The example roots ``/data``, ``/scratch`` and ``/mnt`` are mapped under the temp directory.
A block a room has not made runnable yet is listed in ``NOT_YET`` with the room, and is
``xfail(strict=True)``: it turns red the day it runs.

Benchmark tables: every section between ``bench:start``/``bench:end`` markers is exactly
what ``benchmarks/tables.py`` renders from the results lines embedded under it, and those
lines have every field of the results schema (no row is written by hand).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import logging
import pathlib
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import zarr

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```", re.S | re.M)
DIRECTIVE = re.compile(r"<!-- snippet: (?P<what>[a-z]+)(?::\s*(?P<arg>.*?))? -->\s*$")

#: (file, a line of the block) -> the room whose block does not run yet
NOT_YET: dict[tuple[str, str], str] = {
    # fragments naming what the prose has not defined: add a setup (above) or a skip marker
}


@dataclass
class Snippet:
    path: pathlib.Path
    line: int
    code: str
    directives: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            above = text[: m.start()].rstrip("\n").rsplit("\n", 3)[-3:]
            directives = {}
            for prev in above:
                d = DIRECTIVE.search(prev)
                if d:
                    directives[d.group("what")] = (d.group("arg") or "").strip()
            out.append(Snippet(path, line, m.group("code"), directives))
    return out


ALL = snippets()


# -- setups: real parts under the names the prose uses -----------------------------------


@contextlib.contextmanager
def _s3(ns: dict[str, Any], ctx: Any) -> Any:
    """An S3 endpoint (moto) that ``s3://bucket/...`` URLs reach with default options."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    endpoint = ctx.s3_endpoint
    ctx.monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    fs = endpoint.filesystem()
    if not fs.exists("bucket"):
        endpoint.make_bucket("bucket")
    ns["opts"] = endpoint.storage_options()
    yield
    from swarmstore.testing.fixtures import close_cached_s3fs

    close_cached_s3fs()  # the URLs' filesystems: no session is left to the garbage collector


@contextlib.contextmanager
def _data(ns: dict[str, Any], ctx: Any) -> Any:
    """``backing``: a zarr group on S3 (an xarray dataset); ``s3://bucket/field``: an array."""
    import xarray as xr

    opts = {"anon": False}
    field = zarr.create_array(
        "s3://bucket/field", shape=(64, 64), chunks=(16, 16), dtype="f4",
        storage_options=opts, overwrite=True,
    )  # fmt: skip
    field[:] = 1.0
    ds = xr.Dataset({"t": (("y", "x"), np.ones((16, 16), "f4"))})
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec yet
        warnings.simplefilter("ignore", UserWarning)
        ds.to_zarr("s3://bucket/ds.zarr", mode="w", storage_options=opts, consolidated=True)
    from zarr.storage import FsspecStore

    ns["backing"] = FsspecStore.from_url("s3://bucket/ds.zarr", storage_options=opts)
    ns["data_url"] = "s3://bucket/data.zarr"
    zarr.create_array(
        "s3://bucket/data.zarr", shape=(8,), dtype="i4", storage_options=opts, overwrite=True
    )[:] = 1
    yield


@contextlib.contextmanager
def _client(ns: dict[str, Any], ctx: Any) -> Any:
    """``client``: a Client of an in-process LocalCluster (2 workers, one declaring a GPU)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, processes=False, dashboard_address=":0", resources={"GPU": 1}
        ) as cluster,
        Client(cluster) as client,
    ):
        ns["client"] = client
        yield


@contextlib.contextmanager
def _work(ns: dict[str, Any], ctx: Any) -> Any:
    """Names the compute prose uses: ``x`` (a dask array), ``parts``, ``train_step``,
    ``extract``, ``score``, ``fit``; ``path``, ``load``, ``embed``, ``report``."""
    import dask.array as da

    ns["x"] = da.ones((64, 64), chunks=(32, 32))
    ns["parts"] = list(range(4))
    ns["train_step"] = ns["score"] = lambda block: block * 2
    ns["extract"] = lambda part: part + 1
    ns["fit"] = sum
    ns["path"] = str(ctx.tmp / "raw.npy")
    np.save(ns["path"], np.arange(16, dtype="f4"))
    ns["load"] = np.load
    ns["embed"] = lambda a: a * 2
    ns["report"] = lambda e: float(e.sum())
    yield


@contextlib.contextmanager
def _store(ns: dict[str, Any], ctx: Any) -> Any:
    """``store``: a local zarr store holding a 512x512 array; ``w``, ``s``, ``loss``,
    ``cold_store`` for the checkpoint prose."""
    store = zarr.storage.LocalStore(ctx.tmp / "store")
    zarr.create_array(store, shape=(512, 512), chunks=(256, 256), dtype="f4")[:] = 1.0
    ns.update(
        store=store,
        w=np.ones((64, 64), "f4"),
        s=np.zeros(8, "f4"),
        loss=0.5,
        cold_store=zarr.storage.LocalStore(ctx.tmp / "cold"),
    )
    yield


SETUPS = {"s3": _s3, "data": _data, "client": _client, "work": _work, "store": _store}
ORDER = ["s3", "data", "store", "client", "work"]


@dataclass
class _Ctx:
    tmp: pathlib.Path
    s3_endpoint: Any
    monkeypatch: Any


def _prepare(code: str, tmp: pathlib.Path) -> str:
    for root in ("/data", "/scratch", "/mnt"):
        code = re.sub(rf"(?<![\w/]){root}(?=/)", f"{tmp}{root}", code)
        code = code.replace(f"file://{root}/", f"file://{tmp}{root}/")
    return code


def _run(code: str, ns: dict[str, Any], where: str) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compiled = compile(code, where, "exec", flags=flags)
    if compiled.co_flags & inspect.CO_COROUTINE:

        async def main() -> None:
            await eval(compiled, ns)

        asyncio.run(main())
    else:
        exec(compiled, ns)


_namespaces: dict[pathlib.Path, dict[str, Any]] = {}


def _params() -> list[Any]:
    out = []
    for s in ALL:
        marks = []
        if "skip" in s.directives:
            marks.append(pytest.mark.skip(reason=s.directives["skip"]))
        name = str(s.path.relative_to(ROOT))
        room = next((r for (f, text), r in NOT_YET.items() if f == name and text in s.code), None)
        if room:
            marks.append(pytest.mark.xfail(strict=True, reason=f"{room} room: does not run yet"))
        out.append(pytest.param(s, id=s.id, marks=marks))
    return out


def test_every_skip_says_why():
    for s in ALL:
        if "skip" in s.directives:
            assert s.directives["skip"], f"{s.id}: say why the block is not run"
        unknown = set(s.directives) - {"skip", "setup", "continue"}
        assert not unknown, f"{s.id}: unknown snippet directive {unknown}"
        for name in s.directives.get("setup", "").replace(",", " ").split():
            assert name in SETUPS, f"{s.id}: unknown setup {name!r}"


@pytest.mark.parametrize("snippet", _params())
def test_snippet_runs(snippet, tmp_path, monkeypatch, s3_endpoint):
    monkeypatch.chdir(tmp_path)
    names = set(snippet.directives.get("setup", "").replace(",", " ").split())
    ctx = _Ctx(tmp_path, s3_endpoint, monkeypatch)
    if "continue" in snippet.directives:
        ns = _namespaces.get(snippet.path, {})
    else:
        ns = {"__name__": "__snippet__"}
    with contextlib.ExitStack() as stack:
        for name in ORDER:
            if name in names:
                stack.enter_context(SETUPS[name](ns, ctx))
        _run(_prepare(snippet.code, tmp_path), ns, snippet.id)
    _namespaces[snippet.path] = ns


def test_every_not_yet_entry_names_a_block_that_runs():
    """A stale entry (its block gone, or skipped) would hide nothing and mean nothing."""
    for (name, text), room in NOT_YET.items():
        found = [s for s in ALL if str(s.path.relative_to(ROOT)) == name and text in s.code]
        assert found and "skip" not in found[0].directives, (name, text, room)


def test_the_runner_sees_the_blocks():
    readme = [s for s in ALL if s.path.name == "README.md"]
    assert len(readme) >= 5
    assert _prepare('p = "/data/node0"; u = "file:///data/x"', pathlib.Path("/t")) == (
        'p = "/t/data/node0"; u = "file:///t/data/x"'
    )


# -- benchmark tables ---------------------------------------------------------------------


def _sections() -> list[tuple[pathlib.Path, re.Match[str]]]:
    return [(p, m) for p in DOCS for m in tables.SECTION.finditer(p.read_text())]


def test_the_readme_has_a_generated_benchmark_table():
    assert any(p.name == "README.md" for p, _ in _sections())


@pytest.mark.parametrize(
    "section", _sections(), ids=lambda s: f"{s[0].name}:{s[1].group('benches').strip() or 'all'}"
)
def test_benchmark_tables_are_generated_from_results_lines(section):
    path, m = section
    body = m.group("body")
    data = tables.DATA.search(body)
    assert data, f"{path.name}: a bench section without its bench:data lines"
    lines = [json.loads(raw) for raw in data.group("lines").splitlines() if raw.strip()]
    for rec in lines:
        tables.check_line(rec)  # every field of the results schema, well typed
    source = re.search(r"(?:from|in) `([^`]+)`", body)
    benches = m.group("benches").split()
    expected = tables.render_section(benches, lines, source.group(1) if source else "")
    assert body == expected, f"{path.name}: the table differs from its lines (edited by hand?)"


def test_a_hand_edited_row_is_caught():
    rec = {
        "bench": "storage", "measure": "m", "ours": 1.0, "peer": 2.0, "peer_name": "zarr",
        "unit": "s", "better": "lower", "goal": 1.1, "ratio": 0.5, "passed": True,
    }  # fmt: skip
    body = tables.render_section([], [rec], "r.jsonl")
    text = f"<!-- bench:start -->\n{body}<!-- bench:end -->"
    assert tables.update_text(text, [rec], "r.jsonl") == text
    edited = text.replace("| PASS |", "| MISS |")
    m = tables.SECTION.search(edited)
    assert m and m.group("body") != tables.render_section([], [rec], "r.jsonl")
    with pytest.raises(ValueError, match="lacks 'ratio'"):
        tables.check_line({k: v for k, v in rec.items() if k != "ratio"})
