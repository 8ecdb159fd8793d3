"""The checkpoint's settings: constructor arguments over ``swarmstore.checkpoint.*`` config.

Every value is validated here, in one place, so a bad one fails at construction with a
:class:`ConfigError` naming the key, never later as a hang (``concurrency: 0`` used to
deadlock every listing) or a silent surprise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmstore import config
from swarmstore.checkpoint._lease import LeaseTerms
from swarmstore.checkpoint._retention import KeepBest, RetentionPolicy
from swarmstore.errors import ConfigError

__all__ = ["retention", "settings"]


def _terms(lease: float | str | None, heartbeat: float | str | None) -> LeaseTerms:
    """Validated lease terms: both positive, renewals at least twice per lease."""
    values = {
        "lease": config.value("checkpoint.lease", lease),
        "heartbeat": config.value("checkpoint.heartbeat", heartbeat),
    }
    if values["heartbeat"] * 2 > values["lease"]:
        raise ConfigError(
            f"swarmstore.checkpoint.heartbeat ({values['heartbeat']:g} s) must be at most half "
            f"the lease ({values['lease']:g} s), or live savers would look dead"
        )
    return LeaseTerms(**values)


def settings(
    lease: float | str | None,
    heartbeat: float | str | None,
    verify: bool | None,
    concurrency: int | None,
) -> tuple[LeaseTerms, bool, int]:
    """Lease terms, verify flag and concurrency, validated against the schema."""
    return (
        _terms(lease, heartbeat),
        config.value("checkpoint.verify", verify),
        config.value("checkpoint.concurrency", concurrency),
    )


def _keep_best(value: Any) -> KeepBest | None:
    if value is None or isinstance(value, KeepBest):
        return value
    if isinstance(value, str):
        return KeepBest(value)
    if isinstance(value, Mapping):
        try:
            return KeepBest(**value)
        except TypeError as e:
            raise ConfigError(f"swarmstore.checkpoint.keep-best: {e}") from e
    raise ConfigError(f"keep_best must be a metric name, a mapping or KeepBest, got {value!r}")


def retention(keep_last: int | None, keep_every: int | None, keep_best: Any) -> RetentionPolicy:
    """The retention policy from arguments, falling back to config for each rule."""
    best = (
        keep_best
        if isinstance(keep_best, KeepBest)
        else config.value("checkpoint.keep-best", keep_best)
    )
    return RetentionPolicy(
        keep_last=config.value("checkpoint.keep-last", keep_last),
        keep_every=config.value("checkpoint.keep-every", keep_every),
        keep_best=_keep_best(best),
    )
