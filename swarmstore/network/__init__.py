"""Network: a transfer router that picks the fastest source, and QoS lanes."""

from swarmstore.network._router import SourceStats, TransferRouter

__all__ = ["SourceStats", "TransferRouter"]
