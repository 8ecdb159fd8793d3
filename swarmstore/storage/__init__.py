"""Storage: ReplicatedStore, a Zarr v3 store over several nodes with verified replicas.

Imports: errors, config, hashing, _events, _clock, _sync and network (reads and writes go
through the transfer router); never compute, cache, checkpoint or testing.
"""

from swarmstore.storage._convert import ConvertReport, convert, export
from swarmstore.storage._fragments import Coding, CodingPolicy
from swarmstore.storage._generic import StoreNode
from swarmstore.storage._integrity import Record
from swarmstore.storage._maintenance import (
    RebalanceReport,
    RepairReport,
    ScrubReport,
    inventory,
    rebalance,
    repair,
    scrub,
)
from swarmstore.storage._node import Node, State, check_key
from swarmstore.storage._replicated import ReplicatedStore
from swarmstore.storage._spec import NodeSpec, node_from, s3_config_kwargs
from swarmstore.storage._wrapper import NodeWrapper

__all__ = [
    "Coding",
    "CodingPolicy",
    "ConvertReport",
    "Node",
    "NodeSpec",
    "NodeWrapper",
    "ObstoreNode",
    "RebalanceReport",
    "Record",
    "RepairReport",
    "ReplicatedStore",
    "ScrubReport",
    "State",
    "StoreNode",
    "check_key",
    "convert",
    "export",
    "inventory",
    "node_from",
    "rebalance",
    "repair",
    "s3_config_kwargs",
    "scrub",
]


def __getattr__(name: str) -> object:
    """``ObstoreNode`` on first use: obstore is an extra (``swarmstore[obstore]``)."""
    if name == "ObstoreNode":
        from swarmstore.storage._obstore import ObstoreNode

        return ObstoreNode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
