"""Every exception swarmstore raises.

Each error also inherits the builtin exception a caller would already catch, so
``except KeyError`` / ``except OSError`` / ``except ValueError`` keep working
around code that did not know about swarmstore.
"""

from __future__ import annotations

__all__ = [
    "CacheWarning",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "ChecksumMismatch",
    "ConfigError",
    "CorruptResultError",
    "InvalidKeyError",
    "ManifestError",
    "NodeUnavailable",
    "PlacementError",
    "QuorumError",
    "ReplicaUnavailable",
    "SwarmError",
    "UnsatisfiableRequirements",
]


class SwarmError(Exception):
    """Base class of every swarmstore error."""


class ConfigError(SwarmError, ValueError):
    """Configuration (dask.config ``swarmstore.*``, YAML, constructor arguments) is invalid."""


class InvalidKeyError(SwarmError, ValueError):
    """A store key would escape a node's root or is otherwise malformed."""


class NodeUnavailable(SwarmError, ConnectionError):
    """A backing node could not be reached (outage, timeout, open circuit)."""


class ChecksumMismatch(SwarmError, OSError):
    """Bytes read from a replica do not match their recorded xxh3 checksum."""


class ReplicaUnavailable(SwarmError, OSError):
    """No replica of a key could be read and verified.

    ``key`` names the key and ``tried`` maps each node tried to what went wrong there.
    """

    def __init__(self, key: str, tried: dict[str, str]) -> None:
        self.key = key
        self.tried = dict(tried)
        detail = "; ".join(f"{node}: {why}" for node, why in tried.items()) or "no nodes"
        super().__init__(f"no verified replica of {key!r} could be read ({detail})")


class QuorumError(SwarmError, OSError):
    """A write could not reach its write quorum; the previous value stays readable."""

    def __init__(self, key: str, acked: int, needed: int, failures: dict[str, str]) -> None:
        self.key = key
        self.acked = acked
        self.needed = needed
        self.failures = dict(failures)
        detail = "; ".join(f"{node}: {why}" for node, why in failures.items())
        super().__init__(
            f"write of {key!r} reached {acked} of {needed} required acknowledgements ({detail})"
        )


class PlacementError(SwarmError, ValueError):
    """Task requirements are malformed (bad annotation values)."""


class UnsatisfiableRequirements(SwarmError, RuntimeError):
    """No worker in the cluster can ever satisfy a task's resource requirements."""


class ManifestError(SwarmError, ValueError):
    """A checkpoint manifest is malformed, of an unknown schema version, or tampered with."""


class CorruptResultError(SwarmError, OSError):
    """A durable result in storage is truncated or fails its checksum."""


class CacheWarning(RuntimeWarning):
    """A cache tier failed (disk full, cache directory deleted, corrupt index) and was bypassed.

    Reads still succeed from the backing store; only the speed-up is lost.
    """


class CheckpointNotFoundError(SwarmError, FileNotFoundError):
    """No committed checkpoint has that step, or an object its manifest names is missing."""


class CheckpointExistsError(SwarmError, FileExistsError):
    """A checkpoint of that step is already committed (another writer won the commit)."""
