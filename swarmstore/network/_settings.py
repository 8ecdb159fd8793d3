"""Router settings: constructor arguments, else ``swarmstore.network.*`` config, checked once."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from swarmstore import config
from swarmstore.errors import ConfigError
from swarmstore.network._qos import qos_classes

__all__ = ["Settings"]


def _v(key: str, given: Any = None) -> Any:
    return config.value(f"network.{key}", given)


def _yields(qos: bool, fraction: float | None) -> dict[str, float]:
    """The lowest class yields (the others do not), when there are classes to yield to."""
    classes = qos_classes() if qos else []
    return {classes[-1]: fraction} if fraction and len(classes) > 1 else {}


@dataclass(frozen=True)
class Settings:
    """Every knob of a :class:`~swarmstore.network.TransferRouter`, resolved."""

    alpha: float
    hedge: bool
    hedge_quantile: float
    hedge_budget: float
    hedge_min_samples: int
    circuit_failures: int
    circuit_reset: float
    circuit_reset_max: float
    deadline_factor: float
    deadline_floor: float
    deadline_cold: float
    concurrency: int | None
    source_concurrency: int | None
    qos: bool
    classes: tuple[str, ...]
    default_class: str
    shares: dict[str, float]
    yields: dict[str, float]
    yield_window: float
    host: str
    zone: Any
    topology_slack: float
    explore_interval: float | None
    probe: bool
    probe_interval: float
    probe_interval_max: float
    s3_connect_timeout: float
    s3_read_timeout: float

    @classmethod
    def load(cls, qos: bool = True, probe: Any = None, **given: Any) -> Settings:
        """Resolve ``given`` (router constructor arguments; None: from config)."""
        g = given.get
        s = cls(
            alpha=_v("ewma-alpha", g("alpha")),
            hedge=_v("hedge", g("hedge")),
            hedge_quantile=_v("hedge-quantile", g("hedge_quantile")),
            hedge_budget=_v("hedge-budget", g("hedge_budget")),
            hedge_min_samples=_v("hedge-min-samples", g("hedge_min_samples")),
            circuit_failures=_v("circuit-failures", g("circuit_failures")),
            circuit_reset=_v("circuit-reset", g("circuit_reset")),
            circuit_reset_max=_v("circuit-reset-max", g("circuit_reset_max")),
            deadline_factor=_v("deadline-factor", g("deadline_factor")),
            deadline_floor=_v("deadline-floor", g("deadline_floor")),
            deadline_cold=_v("deadline-cold", g("deadline_cold")),
            concurrency=_v("concurrency", g("concurrency")) or None,
            source_concurrency=_v("source-concurrency", g("source_concurrency")) or None,
            qos=qos,
            classes=tuple(qos_classes()) if qos else ("all",),
            default_class=_v("qos-default") if qos else "all",
            shares=dict(_v("qos-shares") or {}) if qos else {},
            yields=_yields(qos, _v("qos-yield", g("qos_yield"))),
            yield_window=_v("qos-yield-window"),
            host=_v("host", g("host")) or socket.gethostname(),
            zone=_v("zone", g("zone")),
            topology_slack=_v("topology-slack", g("topology_slack")),
            explore_interval=_v("explore-interval", g("explore_interval")),
            probe=_v("probe") if probe is None else bool(probe),
            probe_interval=_v("probe-interval", g("probe_interval")),
            probe_interval_max=_v("probe-interval-max", g("probe_interval_max")),
            s3_connect_timeout=_v("s3-connect-timeout"),
            s3_read_timeout=_v("s3-read-timeout"),
        )
        s.check()
        return s

    def check(self) -> None:
        """Raise ConfigError naming the first setting out of its range."""
        if not 0 <= self.hedge_budget <= 1 or not 0 < self.hedge_quantile < 1:
            raise ConfigError("network.hedge-budget must be in [0, 1], hedge-quantile in (0, 1)")
        if self.deadline_factor < 1 or self.deadline_floor < 0 or self.deadline_cold <= 0:
            raise ConfigError(
                "network.deadline-factor must be >= 1, deadline-floor >= 0, deadline-cold > 0; "
                f"got {self.deadline_factor}, {self.deadline_floor}, {self.deadline_cold}"
            )
