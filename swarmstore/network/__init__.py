"""Network: where each transfer goes, how long it may take, and in which QoS class.

``TransferRouter`` orders a read's sources by expected time for its size, hedges and cuts
late attempts, ejects failing sources and probes them back; ``qos`` sets the class of the
transfers issued inside a block (``with swarmstore.qos("bulk"): ...``); ``Lanes`` is the
shared concurrency budget those classes draw from; ``s3_config_kwargs`` sizes an S3
client's pool from the lanes and turns off the retries that would hide a node.

Imports: ``swarmstore.config``, ``swarmstore.errors`` and ``swarmstore.metrics`` (to
register its figures) only; never storage, cache, compute or checkpoint (they call the
router). Inside, the router module applies what the
order, hedge, circuit, probe, model and verdict modules decide; none of them imports it.
"""

from swarmstore.network import _metrics
from swarmstore.network._circuit import Circuit
from swarmstore.network._model import SourceStats
from swarmstore.network._qos import Lanes, current_qos, qos, qos_classes
from swarmstore.network._router import TransferRouter, default_router, reset_default_router
from swarmstore.network._s3 import s3_config_kwargs

_metrics.register()

__all__ = [
    "Circuit",
    "Lanes",
    "SourceStats",
    "TransferRouter",
    "current_qos",
    "default_router",
    "qos",
    "qos_classes",
    "reset_default_router",
    "s3_config_kwargs",
]
