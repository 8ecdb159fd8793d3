"""Exit codes of the ``swarmstore`` command, and what each error means for the operator.

Every failure ends as one line on stderr (``swarmstore: error: ...``) that says what to fix,
and one of these codes, so a script can tell damage from a typo from an outage:

==== ===================================================================================
0    ok
1    damage found (scrub found corrupt, missing or stale replicas; a checkpoint failed to
     verify; repair could not restore every key)
2    bad input (options, config values, node descriptions, missing directories or buckets)
3    unreachable (a node or the scheduler did not answer); the rest was still done
4    failed for another reason (a full disk, a refused permission, a bug); the line says
     what, ``--debug`` shows the traceback
130  interrupted (Ctrl-C); what was done stays done, rerun to finish
==== ===================================================================================

Errors are classified by meaning (:func:`swarmstore.errors.is_transport_error`), never by
one library's exception types.
"""

from __future__ import annotations

__all__ = [
    "BAD_INPUT",
    "DAMAGE",
    "EXIT_CODES",
    "FAILED",
    "INTERRUPTED",
    "OK",
    "UNREACHABLE",
    "CLIError",
    "classify",
]

OK, DAMAGE, BAD_INPUT, UNREACHABLE, FAILED, INTERRUPTED = 0, 1, 2, 3, 4, 130

#: code -> meaning, as ``swarmstore --help`` and the README print them
EXIT_CODES: dict[int, str] = {
    OK: "ok",
    DAMAGE: "damage found (corrupt, missing or stale replicas; a checkpoint that fails to verify)",
    BAD_INPUT: "bad input (options, config, node descriptions, missing directories or buckets)",
    UNREACHABLE: "a node or the scheduler is unreachable (the rest was still done)",
    FAILED: "failed for another reason (full disk, permissions, a bug: see --debug)",
    INTERRUPTED: "interrupted (Ctrl-C); what was done stays done, rerun to finish",
}


class CLIError(Exception):
    """A failure the command explains in one line; ``code`` is its exit status."""

    def __init__(self, message: str, code: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line that tell the operator what ``exc`` means."""
    from swarmstore import errors

    if isinstance(exc, CLIError):
        return exc.code, str(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, errors.ConfigError | errors.InvalidKeyError | errors.PlacementError):
        return BAD_INPUT, text
    if isinstance(exc, errors.CheckpointNotFoundError | errors.CheckpointExistsError):
        return BAD_INPUT, text
    if errors.is_transport_error(exc):
        return UNREACHABLE, f"unreachable: {text} (check the node or endpoint, then rerun)"
    if isinstance(exc, errors.ChecksumMismatch | errors.ReplicaUnavailable):
        return DAMAGE, f"damage found: {text} (run scrub, then repair)"
    if isinstance(exc, errors.ManifestError | errors.CorruptResultError):
        return DAMAGE, f"damage found: {text}"
    if isinstance(exc, errors.QuorumError):
        return UNREACHABLE, f"{text} (too few nodes answered; check them, then rerun)"
    if isinstance(exc, TypeError) and "unexpected keyword argument" in text:
        return BAD_INPUT, f"an unknown option: {text} (check --storage-options / storage_options)"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return BAD_INPUT, f"not found: {text}"
    if isinstance(exc, PermissionError):
        return FAILED, f"permission denied: {text}"
    if isinstance(exc, OSError):
        return FAILED, f"{type(exc).__name__}: {text}"
    return FAILED, f"internal error: {type(exc).__name__}: {text} (rerun with --debug to see where)"
