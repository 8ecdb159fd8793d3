"""Every exception swarmstore raises.

Each error also inherits the builtin exception a caller would already catch, so
``except KeyError`` / ``except OSError`` / ``except ValueError`` keep working
around code that did not know about swarmstore.
"""

from __future__ import annotations

__all__ = [
    "CacheWarning",
    "CheckpointConflictError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "ChecksumMismatch",
    "ConfigError",
    "CorruptResultError",
    "DeadlineExceeded",
    "FragmentsUnavailable",
    "InvalidKeyError",
    "LeaseLostError",
    "ManifestError",
    "ManifestVersionError",
    "NodeRefused",
    "NodeUnavailable",
    "PlacementError",
    "QuorumError",
    "ReplicaUnavailable",
    "SwarmError",
    "UnsatisfiableRequirements",
    "as_node_unavailable",
    "is_transport_error",
]


class SwarmError(Exception):
    """Base class of every swarmstore error."""


class ConfigError(SwarmError, ValueError):
    """Configuration (dask.config ``swarmstore.*``, YAML, constructor arguments) is invalid."""


class InvalidKeyError(SwarmError, ValueError):
    """A store key would escape a node's root or is otherwise malformed."""


class NodeUnavailable(SwarmError, ConnectionError):
    """A backing node could not be reached (outage, timeout, open circuit)."""


class NodeRefused(SwarmError, OSError):
    """A node answered but refused the operation (no such bucket, access denied, a value
    that kept changing under a conditional write): an answer, not an outage."""


class DeadlineExceeded(NodeUnavailable, TimeoutError):
    """A node did not answer within the deadline the router gave the attempt.

    The router then tries the next replica and counts the miss against the node's circuit.
    """


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


class FragmentsUnavailable(ReplicaUnavailable):
    """Fewer than ``k`` verified fragments of one version of an erasure-coded key could be
    read: more than ``m`` are missing, corrupt, stale or unreachable.

    ``tried`` maps every node of the key to its fragment's state (``"fragment 2 of v(3, ..)"``,
    ``"missing"``, ``"corrupt: ..."``, ``"down: ..."``). Repair cannot rebuild it either.
    """

    def __init__(self, key: str, tried: dict[str, str], k: int, m: int) -> None:
        self.k, self.m = k, m
        self.key = key
        self.tried = dict(tried)
        detail = "; ".join(f"{node}: {why}" for node, why in tried.items()) or "no nodes"
        OSError.__init__(
            self,
            f"erasure-coded key {key!r} (RS({k},{m})) has fewer than {k} verified fragments "
            f"of one version ({detail})",
        )


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


class ManifestVersionError(ManifestError):
    """A checkpoint document was written by a newer swarmstore: upgrade to read it.

    Garbage collection never sweeps beside one, since it cannot tell what it names.
    """


class CheckpointConflictError(CheckpointExistsError):
    """Another writer moved the branch (or took the step) first.

    Its ``rebase`` hint says whether the two commits touched disjoint chunks, so the
    losing session can ``rebase()`` onto the new tip and commit again.
    """


class LeaseLostError(SwarmError, TimeoutError):
    """A save or collection stopped renewing its lease long enough to be declared dead.

    Another process may have removed what it wrote; nothing was committed. Save again.
    """


#: modules whose exceptions mean "the node could not be reached or did not answer in time"
_TRANSPORT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "obstore", "requests")
#: builtin errors that mean the same, whatever module raised them
_TRANSPORT_TYPES: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` means a node was unreachable, rather than a bad key or a bug.

    Classified by meaning, not by one library's types: connection and timeout errors of any
    backend (botocore, aiohttp, obstore, urllib3, OS sockets), and OS errors of the I/O kind
    (``EIO``, ``ENOTCONN``, ``EHOSTUNREACH``, ...), but never a missing key
    (``FileNotFoundError``), a refusal (``PermissionError``), an existing key
    (``FileExistsError``) or a full disk (``ENOSPC``, which is a node's answer, not silence).
    Imports none of those libraries: it looks at the exception's type and module.
    """
    if isinstance(exc, (NodeUnavailable, *_TRANSPORT_TYPES)):
        return True
    if isinstance(exc, SwarmError):  # a checksum mismatch or a quorum error is an answer
        return False
    if isinstance(exc, FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError):
        return False
    if isinstance(exc, OSError):
        return exc.errno in _TRANSPORT_ERRNOS or exc.errno is None
    if type(exc).__name__ in _NOT_TRANSPORT:
        return False
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore's ClientError: an answer
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(response["Error"].get("Code", ""))
        return status >= 500 or code in _UNHEALTHY_CODES
    return any(
        (cls.__module__ or "").split(".", 1)[0] in _TRANSPORT_MODULES for cls in type(exc).__mro__
    )


def _errnos() -> frozenset[int]:
    import errno

    names = (
        "EIO",
        "ENOTCONN",
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "ETIMEDOUT",
        "EPIPE",
        "ESTALE",
        "EHOSTDOWN",
        "ENODEV",
        "ENXIO",
        "ESHUTDOWN",
    )
    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


_TRANSPORT_ERRNOS = _errnos()
#: S3 error codes that mean "the node is unhealthy", though it answered
_UNHEALTHY_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
)
#: library error types that are answers (bad request, missing key), not silence
_NOT_TRANSPORT = frozenset(
    {"NoSuchKey", "NoSuchBucket", "ParamValidationError", "NotFoundError", "PreconditionFailed"}
)


def as_node_unavailable(exc: BaseException, where: str) -> BaseException:
    """``exc`` as a :class:`NodeUnavailable` naming ``where`` when it is a transport error,
    else ``exc`` unchanged. Use as ``raise as_node_unavailable(e, node.name) from e``."""
    if isinstance(exc, NodeUnavailable) or not is_transport_error(exc):
        return exc
    return NodeUnavailable(f"{where}: {type(exc).__name__}: {exc}")
