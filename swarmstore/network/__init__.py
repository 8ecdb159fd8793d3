"""Network: a transfer router that picks the fastest source, hedges, breaks circuits; QoS lanes.

``TransferRouter`` decides where each read goes and when to hedge; ``qos`` sets the class
of the transfers issued inside a block (``with swarmstore.qos("bulk"): ...``); ``Lanes``
is the shared concurrency budget those classes draw from.

Imports: errors, config, _events, _clock, metrics; never another capability (storage,
cache, compute, checkpoint) or testing: stores call the router, not the other way round.
"""

from swarmstore.network._circuit import Circuit
from swarmstore.network._qos import Lanes, current_qos, qos, qos_classes
from swarmstore.network._router import TransferRouter, default_router, reset_default_router
from swarmstore.network._stats import SourceStats

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
]
