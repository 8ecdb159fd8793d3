"""Every notebook and script under examples/ runs to the end (nbclient, fresh kernels)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    noise = [
        out.get("text", "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("name") == "stderr" or out.get("output_type") == "error"
    ]
    assert not noise, "quiet on success: stderr in the outputs:\n" + "".join(noise)[:3000]


#: scripts not quiet yet at exit, with the room that owns the cause
NOT_QUIET_YET: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_runs(path, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if path.stem in NOT_QUIET_YET:  # strict: once quiet, the entry must go
        assert proc.stderr, f"{path.stem} is quiet now: drop it from NOT_QUIET_YET"
        pytest.xfail(NOT_QUIET_YET[path.stem])
    assert proc.stderr == "", proc.stderr[-3000:]  # quiet on success
