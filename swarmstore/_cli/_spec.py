"""Stores as the command line and ``--config`` describe them; every option honoured or refused.

- ``--config FILE`` is always read when given (with ``--store`` too): its ``store:``
  section describes the replicated store, the rest is swarmstore configuration, validated
  and merged into dask.config before anything is built.
- A field given both as a flag and in the file must agree, or the command refuses.
- Node descriptions are checked field by field (a typo such as ``zonee`` names the field and
  the nearest known one); ``--storage-options`` must be a JSON object and is refused when no
  URL it could apply to (``s3://``) is given.
- A local node whose directory is missing is refused, never created: a missing mount point
  would otherwise fill the root disk.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmstore._cli._exit import BAD_INPUT, CLIError
from swarmstore._together import together

if TYPE_CHECKING:
    import argparse

__all__ = ["StoreSpec", "check_roots", "plain_store", "replicated_store", "store_spec"]

_STORE_FIELDS = ("nodes", "replicas", "write_quorum", "state_dir", "storage_options")
_NODE_FIELDS = ("target", "url", "name", "weight", "zone", "host", "storage_options")


@dataclass
class StoreSpec:
    """What the command line and the config file say about the store, already checked."""

    nodes: list[Any] = field(default_factory=list)
    replicas: int | None = None
    write_quorum: int | None = None
    state_dir: str | None = None
    storage_options: dict[str, Any] | None = None
    source: str = "the command line"


def _nearest(word: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise CLIError(f"config file {path} does not exist") from None
    except OSError as e:
        raise CLIError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CLIError(f"config file {path} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CLIError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    return raw


def _apply_config(path: str, raw: dict[str, Any]) -> None:
    """Validate the swarmstore part of a config file and merge it into dask.config."""
    import dask.config

    from swarmstore import config
    from swarmstore.errors import ConfigError

    tree = raw if "swarmstore" in raw else {"swarmstore": raw}
    try:
        config.validate(tree)
    except ConfigError as e:
        raise CLIError(f"{path}: {e}") from None
    dask.config.update(dask.config.config, tree, priority="new")


def _storage_options(text: str | None, where: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except ValueError as e:
        raise CLIError(f"{where} is not valid JSON ({e.msg}); give an object like "
                       "'{\"anon\": true}'") from None  # fmt: skip
    if not isinstance(options, dict):
        raise CLIError(f"{where} must be a JSON object like '{{\"anon\": true}}', got {text}")
    return options


def _file_section(path: str, raw: dict[str, Any]) -> dict[str, Any]:
    section = raw.pop("store", None)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise CLIError(f"{path}: store must be a mapping of {', '.join(_STORE_FIELDS)}")
    out = {}
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name not in _STORE_FIELDS:
            raise CLIError(f"{path}: unknown field store.{key} ({_nearest(name, _STORE_FIELDS)})")
        out[name] = value
    if "storage_options" in out and not isinstance(out["storage_options"], dict | type(None)):
        raise CLIError(f"{path}: store.storage_options must be a mapping")
    return out


def _merge(flag: str, given: Any, path: str, fname: str, in_file: Any) -> Any:
    if given is None:
        return in_file
    if in_file is not None and in_file != given:
        raise CLIError(
            f"{flag} {given!r} and {path} store.{fname}: {in_file!r} disagree; give one of them"
        )
    return given


def store_spec(args: argparse.Namespace) -> StoreSpec:
    """Read ``--config`` (if any) and merge it with the flags into a checked StoreSpec."""
    section: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path:
        raw = _read_yaml(path)
        section = _file_section(path, raw)
        if raw:
            _apply_config(path, raw)
    flag_options = _storage_options(getattr(args, "storage_options", None), "--storage-options")
    spec = StoreSpec(source=path or "the command line")
    spec.nodes = _merge("--node", args.node, path, "nodes", section.get("nodes")) or []
    spec.replicas = _merge("--replicas", args.replicas, path, "replicas", section.get("replicas"))
    spec.write_quorum = section.get("write_quorum")
    spec.state_dir = _merge(
        "--state-dir", args.state_dir, path, "state_dir", section.get("state_dir")
    )
    spec.storage_options = _merge(
        "--storage-options", flag_options, path, "storage_options", section.get("storage_options")
    )
    _check_values(spec)
    return spec


def _check_values(spec: StoreSpec) -> None:
    from swarmstore import config
    from swarmstore.errors import ConfigError

    where = spec.source
    for attr, key, flag in [
        ("replicas", "storage.replicas", "--replicas"),
        ("write_quorum", "storage.write-quorum", "store.write_quorum"),
        ("state_dir", "storage.state-dir", "--state-dir"),
    ]:
        given = getattr(spec, attr)
        if given is None:
            continue
        try:
            setattr(spec, attr, config.value(key, given))
        except ConfigError as e:
            must = str(e).split(" must be ", 1)[-1]
            name = flag if where == "the command line" else f"{where}: store.{attr}"
            raise CLIError(f"{name} must be {must}") from None
    if not isinstance(spec.nodes, list):
        raise CLIError(f"{where}: store.nodes must be a list of node URLs or mappings")
    spec.nodes = [_check_node(n, i, where) for i, n in enumerate(spec.nodes)]


def _check_node(node: Any, i: int, where: str) -> Any:
    at = f"{where}: store.nodes[{i}]" if where != "the command line" else f"--node #{i + 1}"
    if isinstance(node, str):
        if not node:
            raise CLIError(f"{at}: empty node URL")
        return node
    if not isinstance(node, dict):
        raise CLIError(f"{at} must be a URL or a mapping with target/zone/weight, got {node!r}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = str(key)
        if name not in _NODE_FIELDS:
            raise CLIError(f"{at}: unknown field {name!r} ({_nearest(name, _NODE_FIELDS)})")
        out["target" if name == "url" else name] = value
    if not isinstance(out.get("target"), str) or not out["target"]:
        raise CLIError(f"{at} needs target: the node's URL")
    weight = out.get("weight", 1.0)
    ok = isinstance(weight, int | float) and not isinstance(weight, bool)
    if not ok or not math.isfinite(weight) or weight <= 0:
        raise CLIError(f"{at}.weight must be a positive number, got {weight!r}")
    for name in ("name", "host"):
        if name in out and not (isinstance(out[name], str) and out[name]):
            raise CLIError(f"{at}.{name} must be a non-empty string, got {out[name]!r}")
    zone = out.get("zone")
    if zone is not None and (isinstance(zone, bool) or not isinstance(zone, str | int)):
        raise CLIError(f"{at}.zone must be a string or an integer, got {zone!r}")
    if not isinstance(out.get("storage_options", {}), dict | type(None)):
        raise CLIError(f"{at}.storage_options must be a mapping")
    return out


def _is_s3(target: Any) -> bool:
    url = target.get("target") if isinstance(target, dict) else target
    return isinstance(url, str) and url.split("://", 1)[0] in ("s3", "s3a")


def replicated_store(spec: StoreSpec) -> Any:
    """A ReplicatedStore over ``spec``'s nodes; refuses what it could not honour."""
    from swarmstore.errors import ConfigError
    from swarmstore.storage import NodeSpec, ReplicatedStore

    if not spec.nodes:
        raise CLIError("no nodes: pass --node URL (repeatable) or a --config with store.nodes")
    if spec.storage_options is not None and not any(_is_s3(n) for n in spec.nodes):
        raise CLIError("--storage-options applies to s3:// nodes, and none of the nodes is on S3")
    nodes = [NodeSpec(**n) if isinstance(n, dict) else n for n in spec.nodes]
    try:
        return ReplicatedStore(
            nodes,
            replicas=spec.replicas,
            write_quorum=spec.write_quorum,
            state_dir=spec.state_dir,
            storage_options=spec.storage_options,
        )
    except ConfigError as e:
        raise CLIError(str(e)) from None


def check_roots(store: Any) -> None:
    """Refuse nodes whose root is missing: a local directory, an S3 bucket.

    A missing root is never created (a missing mount point would fill the root disk). An
    S3 node that does not answer is left to the command, which reports it as unreachable.
    """
    from swarmstore import _sync
    from swarmstore.storage._backends import LocalNode, S3Node

    for node in store.nodes:
        root = getattr(node, "root", None)
        if isinstance(node, LocalNode) and root is not None and not os.path.isdir(root):
            what = "is not a directory" if os.path.exists(root) else "does not exist"
            raise CLIError(
                f"node {node.name}: {root} {what}; mount or create it, or remove the node "
                "(swarmstore never creates a missing node root)",
                BAD_INPUT,
            )
    buckets = [n for n in store.nodes if isinstance(n, S3Node)]
    if buckets:
        _sync.run(_check_buckets(buckets))
    objects = [n for n in store.nodes if type(n).__name__ == "ObstoreNode"]
    if objects:
        _sync.run(_check_object_buckets(objects))


async def _check_buckets(nodes: list[Any]) -> None:
    """``head_bucket`` through each node's own request path (its sessions, closed with it)."""

    from swarmstore.errors import is_transport_error
    from swarmstore.storage._s3 import _Absent

    async def one(node: Any) -> None:
        bucket = node.path.partition("/")[0]
        try:
            await node._call("head_bucket")
        except _Absent:
            raise CLIError(
                f"node {node.name}: bucket {bucket!r} does not exist; create it or fix the URL"
            ) from None
        except Exception as e:
            if is_transport_error(e):
                return  # the command reports it as unreachable
            if isinstance(e, PermissionError) or "403" in str(e) or "AccessDenied" in str(e):
                raise CLIError(f"node {node.name}: access to bucket {bucket!r} denied") from None
            raise

    await together(*(one(n) for n in nodes))


async def _check_object_buckets(nodes: list[Any]) -> None:
    """One LIST through each obstore node (``ping``): a 404 is a missing bucket, a 403 a
    refusal; a node that does not answer is left to the command."""

    from swarmstore.errors import NodeRefused, NodeUnavailable

    async def one(node: Any) -> None:
        bucket = node.name.split("://", 1)[-1].partition("/")[0]
        try:
            await node.ping()
        except NodeUnavailable:
            return  # the command reports it as unreachable
        except NodeRefused as e:
            text = str(e)
            if "404" in text or "NoSuchBucket" in text:
                raise CLIError(
                    f"node {node.name}: bucket {bucket!r} does not exist; create it or fix the URL"
                ) from None
            if "403" in text or "AccessDenied" in text:
                raise CLIError(f"node {node.name}: access to bucket {bucket!r} denied") from None
            raise

    await together(*(one(n) for n in nodes))


def plain_store(url: str, options: dict[str, Any] | None, *, flag: str, exists: bool) -> Any:
    """A zarr store for ``--store``/``--to``: a local path, ``file://`` or any fsspec URL.

    ``exists``: a local directory must already be there (a checkpoint store to read);
    otherwise it is created on first write (a restore target).
    """
    from swarmstore.dataset import resolve_store

    if not isinstance(url, str) or not url:
        raise CLIError(f"{flag} needs a URL or a path")
    remote = "://" in url and not url.startswith("file://")
    if options is not None and not remote:
        raise CLIError(f"--storage-options applies to remote URLs; {flag} {url} is local")
    if not remote:
        path = url.removeprefix("file://")
        if exists and not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise CLIError(f"{flag} {url}: {path} {what}")
        if not exists and os.path.exists(path) and not os.path.isdir(path):
            raise CLIError(f"{flag} {url}: {path} exists and is not a directory")
    try:
        return resolve_store(url, storage_options=options if remote else None)
    except (ValueError, ImportError) as e:
        raise CLIError(f"cannot open {flag} {url}: {e}") from None
