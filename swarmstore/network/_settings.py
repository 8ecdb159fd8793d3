"""Router settings: constructor arguments, else ``swarmstore.network.*`` config, checked once."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from swarmstore import config
from swarmstore.errors import ConfigError
from swarmstore.network._qos import qos_classes

__all__ = ["Settings"]


def _cfg(value: Any, key: str) -> Any:
    return config.get(f"network.{key}") if value is None else value


def _seconds(value: Any, key: str) -> float | None:
    return config.get_seconds(f"network.{key}", value)


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
    host: str
    zone: Any
    topology_slack: float
    explore_interval: float | None
    probe: bool
    probe_interval: float
    probe_interval_max: float

    @classmethod
    def load(cls, qos: bool = True, probe: Any = None, **given: Any) -> Settings:
        """Resolve ``given`` (router constructor arguments; None: from config)."""
        g = given.get
        s = cls(
            alpha=float(_cfg(g("alpha"), "ewma-alpha")),
            hedge=bool(_cfg(g("hedge"), "hedge")),
            hedge_quantile=float(_cfg(g("hedge_quantile"), "hedge-quantile")),
            hedge_budget=float(_cfg(g("hedge_budget"), "hedge-budget")),
            hedge_min_samples=int(_cfg(g("hedge_min_samples"), "hedge-min-samples")),
            circuit_failures=int(_cfg(g("circuit_failures"), "circuit-failures")),
            circuit_reset=_seconds(g("circuit_reset"), "circuit-reset") or 0.0,
            circuit_reset_max=_seconds(g("circuit_reset_max"), "circuit-reset-max") or 0.0,
            deadline_factor=float(_cfg(g("deadline_factor"), "deadline-factor")),
            deadline_floor=_seconds(g("deadline_floor"), "deadline-floor") or 0.0,
            deadline_cold=_seconds(g("deadline_cold"), "deadline-cold") or 0.0,
            concurrency=int(_cfg(g("concurrency"), "concurrency") or 0) or None,
            source_concurrency=int(_cfg(g("source_concurrency"), "source-concurrency") or 0)
            or None,
            qos=qos,
            classes=tuple(qos_classes()) if qos else ("all",),
            default_class=str(config.get("network.qos-default")) if qos else "all",
            shares=dict(config.get("network.qos-shares") or {}) if qos else {},
            host=_cfg(g("host"), "host") or socket.gethostname(),
            zone=_cfg(g("zone"), "zone"),
            topology_slack=float(_cfg(g("topology_slack"), "topology-slack")),
            explore_interval=_seconds(g("explore_interval"), "explore-interval"),
            probe=bool(config.get("network.probe")) if probe is None else bool(probe),
            probe_interval=_seconds(g("probe_interval"), "probe-interval") or 0.0,
            probe_interval_max=_seconds(g("probe_interval_max"), "probe-interval-max") or 0.0,
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
