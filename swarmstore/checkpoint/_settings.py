"""The checkpoint's settings: constructor arguments over ``swarmstore.checkpoint.*`` config.

Every value is validated here, in one place, so a bad one fails at construction with a
:class:`ConfigError` naming the key, never later as a hang (``concurrency: 0`` used to
deadlock every listing) or a silent surprise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmstore import config
from swarmstore.checkpoint._gc import KeepBest, RetentionPolicy
from swarmstore.checkpoint._lease import LeaseTerms
from swarmstore.errors import ConfigError

__all__ = ["retention", "settings"]


def _terms(lease: float | str | None, heartbeat: float | str | None) -> LeaseTerms:
    """Validated lease terms: both positive, renewals at least twice per lease."""
    values = {}
    for name, given in (("lease", lease), ("heartbeat", heartbeat)):
        value = config.get_seconds(f"checkpoint.{name}", given)
        if value is None or not value > 0:
            raise ConfigError(
                f"swarmstore.checkpoint.{name} must be a positive duration, "
                f"got {given if given is not None else value!r}"
            )
        values[name] = value
    if values["heartbeat"] * 2 > values["lease"]:
        raise ConfigError(
            f"swarmstore.checkpoint.heartbeat ({values['heartbeat']:g} s) must be at most half "
            f"the lease ({values['lease']:g} s), or live savers would look dead"
        )
    return LeaseTerms(**values)


def _flag(name: str, given: bool | None) -> bool:
    value = config.get(f"checkpoint.{name}") if given is None else given
    if not isinstance(value, bool):
        raise ConfigError(f"swarmstore.checkpoint.{name} must be true or false, got {value!r}")
    return value


def _count(name: str, given: int | None, *, optional: bool = False) -> int | None:
    value = config.get(f"checkpoint.{name}") if given is None else given
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"swarmstore.checkpoint.{name} must be a positive integer, got {value!r}")
    return value


def settings(
    lease: float | str | None,
    heartbeat: float | str | None,
    verify: bool | None,
    concurrency: int | None,
) -> tuple[LeaseTerms, bool, int]:
    """Lease terms, verify flag and concurrency, validated."""
    count = _count("concurrency", concurrency)
    assert count is not None
    return _terms(lease, heartbeat), _flag("verify", verify), count


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
    return RetentionPolicy(
        keep_last=_count("keep-last", keep_last, optional=True),
        keep_every=_count("keep-every", keep_every, optional=True),
        keep_best=_keep_best(
            keep_best if keep_best is not None else config.get("checkpoint.keep-best")
        ),
    )
