"""Fetch the peers' own test sources at the versions installed in this venv (``make peer-tests``).

zarr's and xarray's sdists on PyPI carry their test suites; distributed's sdist does not
(only ``conftest.py`` and ``utils_test.py``), so its tests come from the release tag's
source archive on GitHub. Each peer lands in ``.peer-tests/<name>-<version>/`` with only
the files its tests need (the tests, the root ``conftest.py`` and the ``pyproject.toml``
holding its pytest configuration), never its library code: the tests import the installed
package. ``SOURCE.json`` there says where the files came from. Nothing here is committed.

Usage: ``python tests/peers/fetch_sources.py [--dest DIR] [zarr xarray distributed]``.
Already fetched versions are kept; a new version in the venv fetches afresh.

Offline, distributed's tag archive can come from a local git clone instead:
``PEER_TESTS_DISTRIBUTED_GIT=/path/to/distributed/.git``. The release tag is used when the
clone has it; otherwise its HEAD is used and ``SOURCE.json`` says so (``"exact": false``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / ".peer-tests"


@dataclass(frozen=True)
class Peer:
    """One peer: its distribution name, the members its tests need, where they come from."""

    name: str
    members: tuple[str, ...]  # paths inside the source tree (directories end with "/")
    sdist_has_tests: bool
    github: str = ""  # owner/repo, for peers whose sdist lacks the tests

    @property
    def version(self) -> str:
        return importlib.metadata.version(self.name)


PEERS = {
    "zarr": Peer("zarr", ("pyproject.toml", "tests/"), sdist_has_tests=True),
    "xarray": Peer(
        "xarray", ("pyproject.toml", "conftest.py", "xarray/tests/"), sdist_has_tests=True
    ),
    "distributed": Peer(
        "distributed",
        ("pyproject.toml", "conftest.py", "distributed/tests/"),
        sdist_has_tests=False,
        github="dask/distributed",
    ),
}


def target(dest: pathlib.Path, peer: Peer) -> pathlib.Path:
    """Where ``peer``'s tests live once fetched: ``<dest>/<name>-<version>``."""
    return dest / f"{peer.name}-{peer.version}"


def _wanted(name: str, members: tuple[str, ...]) -> str | None:
    """``name`` (an archive path) relative to the source root, if it is one of ``members``."""
    parts = name.split("/", 1)
    if len(parts) < 2:
        return None
    rel = parts[1]
    for m in members:
        if rel == m or (m.endswith("/") and rel.startswith(m)):
            return rel
    return None


def _extract(archive: bytes, members: tuple[str, ...], into: pathlib.Path) -> int:
    """Unpack the wanted regular files of a ``.tar.gz`` into ``into``; return their count."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for info in tar:
            rel = _wanted(info.name, members)
            if rel is None or not info.isfile() or ".." in rel.split("/"):
                continue
            path = into / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(info)
            assert src is not None
            path.write_bytes(src.read())
            count += 1
    return count


def _sdist(peer: Peer, downloads: pathlib.Path) -> tuple[bytes, str]:
    """The sdist of ``peer`` at its installed version, through pip (cached in ``downloads``)."""
    downloads.mkdir(parents=True, exist_ok=True)
    pattern = f"{peer.name}-{peer.version}.tar.gz"
    found = sorted(downloads.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["--no-binary", ":all:", "--dest", str(downloads), f"{peer.name}=={peer.version}"]
        subprocess.run(cmd, check=True)
        found = sorted(downloads.glob(pattern))
    if not found:
        raise SystemExit(f"pip gave no {pattern} in {downloads}")
    return found[0].read_bytes(), f"PyPI sdist {found[0].name}"


def _github(peer: Peer) -> tuple[bytes, str, bool]:
    """The release tag's archive from GitHub, or from a local clone when offline."""
    url = f"https://github.com/{peer.github}/archive/refs/tags/{peer.version}.tar.gz"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read(), f"GitHub tag archive {url}", True
    except OSError as e:
        clone = os.environ.get(f"PEER_TESTS_{peer.name.upper()}_GIT")
        if not clone:
            raise SystemExit(
                f"cannot fetch {url} ({e}); offline, point PEER_TESTS_{peer.name.upper()}_GIT "
                f"at a git clone of {peer.github}"
            ) from e
    return _git_archive(peer, pathlib.Path(clone))


def _git_archive(peer: Peer, clone: pathlib.Path) -> tuple[bytes, str, bool]:
    git = ["git", f"--git-dir={clone}"]
    tags = subprocess.run([*git, "tag", "--list", peer.version], capture_output=True, text=True)
    exact = tags.stdout.strip() == peer.version
    ref = peer.version if exact else "HEAD"
    sha = subprocess.run([*git, "rev-parse", ref], capture_output=True, text=True, check=True)
    desc = subprocess.run([*git, "describe", "--tags", ref], capture_output=True, text=True)
    prefix = f"{peer.name}-{peer.version}/"
    out = subprocess.run(
        [*git, "archive", "--format=tar.gz", f"--prefix={prefix}", ref, "--", *peer.members],
        capture_output=True,
        check=True,
    )
    what = f"git archive of {clone} at {ref} ({sha.stdout.strip()}, {desc.stdout.strip()})"
    if not exact:
        what += f": the clone has no tag {peer.version}, so these tests are not the release's"
    return out.stdout, what, exact


def fetch(peer: Peer, dest: pathlib.Path) -> pathlib.Path:
    """Fetch ``peer``'s tests into :func:`target` unless already there; return that path."""
    into = target(dest, peer)
    if (into / "SOURCE.json").exists():
        return into
    if peer.sdist_has_tests:
        archive, origin = _sdist(peer, dest / "_downloads")
        exact = True
    else:
        archive, origin, exact = _github(peer)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{peer.name}-", dir=dest))
    try:
        count = _extract(archive, peer.members, tmp)
        if not any(p.name.startswith("test_") for p in tmp.rglob("*.py")):
            raise SystemExit(f"{origin} holds no tests under {peer.members}")
        source = {
            "package": peer.name,
            "version": peer.version,
            "origin": origin,
            "exact": exact,
            "sha256": hashlib.sha256(archive).hexdigest(),
            "files": count,
        }
        (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(into, ignore_errors=True)
        tmp.rename(into)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", metavar="PEER", help=f"any of {', '.join(PEERS)}")
    parser.add_argument("--dest", type=pathlib.Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {list(PEERS)}")
    args.dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.peers or PEERS:
        try:
            path = fetch(PEERS[name], args.dest)
        except (SystemExit, OSError, subprocess.CalledProcessError) as e:
            print(f"peer-tests: {name}: NOT fetched: {e}", file=sys.stderr)
            failed.append(name)
            continue
        origin = json.loads((path / "SOURCE.json").read_text())["origin"]
        print(f"peer-tests: {name} {PEERS[name].version}: {path} ({origin})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
