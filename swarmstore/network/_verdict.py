"""Verdict: what an attempt's exception says about its source.

Only what means "this source is unhealthy" counts against it: a transport error
(:func:`swarmstore.errors.is_transport_error`, deadline misses included) or a checksum
mismatch. A ``KeyError`` means the replica lacks the key: the next replica is tried, and
the source's health is untouched. Anything else (``ValueError``, ``InvalidKeyError``, a bug
in the caller's attempt) is the caller's, not the source's: it is re-raised at once and
never opens a circuit.
"""

from __future__ import annotations

from typing import Literal

from swarmstore.errors import ChecksumMismatch, is_transport_error

__all__ = ["Verdict", "verdict"]

Verdict = Literal["missing", "failure", "fatal"]


def verdict(exc: BaseException) -> Verdict:
    """``"missing"``, ``"failure"`` (counts against the source) or ``"fatal"`` (re-raise)."""
    if isinstance(exc, KeyError):
        return "missing"
    if isinstance(exc, ChecksumMismatch) or is_transport_error(exc):
        return "failure"
    return "fatal"
