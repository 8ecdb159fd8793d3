"""A ReplicatedStore's settings: quorums, block size, grace, roots, state dir.

Every value comes through :func:`swarmstore.config.value`, validated against the schema
(constructor arguments against the same entries).
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import xxhash

from swarmstore import config
from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from swarmstore.storage._coordinator import Coordinator
    from swarmstore.storage._node import Node

__all__ = ["allow_create", "configure", "default_state_dir"]


def configure(
    store: Coordinator,
    replicas: int | None,
    write_quorum: int | None,
    read_quorum: int | None,
    read_repair: bool | None,
    min_block: int | str | None,
) -> None:
    store.replicas = config.value("storage.replicas", replicas)
    if not 1 <= store.replicas <= len(store.nodes):
        raise ConfigError(f"replicas={store.replicas} needs 1..{len(store.nodes)} (the nodes)")
    wq = config.value("storage.write-quorum", write_quorum)
    store.write_quorum = store.replicas // 2 + 1 if wq is None else wq
    if not 1 <= store.write_quorum <= store.replicas:
        raise ConfigError(f"write_quorum={store.write_quorum} needs 1..replicas")
    rq = config.value("storage.read-quorum", read_quorum)
    store.read_quorum = store.replicas - store.write_quorum + 1 if rq is None else rq
    if not 1 <= store.read_quorum <= store.replicas:
        raise ConfigError(f"read_quorum={store.read_quorum} needs 1..replicas")
    store.read_repair = config.value("storage.read-repair", read_repair)
    store.min_block = config.value("storage.verify-block-size", min_block)
    store._grace_cap = config.value("storage.write-grace")
    store.node_timeout = config.value("storage.node-timeout")
    store.create_patience = config.value("storage.create-patience")


def default_state_dir(nodes: Sequence[Node]) -> pathlib.Path:
    """Where hints and journals go by default: per node set, under the user's state dir."""
    base = config.value("storage.state-dir")
    root = (
        pathlib.Path(base)
        if base
        else pathlib.Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser()
        / "swarmstore"
    )
    ident = xxhash.xxh3_64_hexdigest("\0".join(sorted(n.name for n in nodes)).encode())
    return root / f"store-{ident}"


def allow_create(nodes: Sequence[Node], create: bool | None) -> None:
    """Explicit ``create`` sets every node's flag; None allows it for a brand-new store
    (no local root exists yet) and otherwise leaves the nodes as they are."""
    if create is None:
        local = [e for n in nodes if (e := n.root_exists()) is not None]
        if not local or any(local):
            return
    for n in nodes:
        n.allow_create(bool(create) or create is None)
