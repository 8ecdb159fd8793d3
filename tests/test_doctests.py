"""The examples in the library's docstrings run, and say what they show.

Docstring examples are documentation a reader copies; the suite runs them (every module
of ``swarmstore/`` with a ``>>>`` line) so that they cannot rot unseen (two had, in
compute, before this test).
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parent.parent / "swarmstore"


def _modules() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if ">>> " in path.read_text():
            parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append(".".join(parts))
    return out


MODULES = _modules()


def test_there_are_examples_to_run():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.attempted > 0, f"{name}: a '>>> ' line that is not a runnable example"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
