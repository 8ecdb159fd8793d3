"""Retention: which checkpoints to keep, as a plain decision over steps and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from swarmstore.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["KeepBest", "RetentionPolicy"]


class _HasStep(Protocol):
    step: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``n`` checkpoints with the best ``metadata[metric]`` (``mode`` min or max)."""

    metric: str
    n: int = 1
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"keep_best mode must be 'min' or 'max', got {self.mode!r}")
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ConfigError(f"keep_best n must be a positive integer, got {self.n!r}")


@dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints to keep; a checkpoint any rule keeps is kept.

    The newest checkpoint is always kept. With no rule at all, everything is kept.

    >>> policy = RetentionPolicy(keep_last=2, keep_every=10)
    >>> from types import SimpleNamespace as C
    >>> sorted(policy.select([C(step=s, metadata={}) for s in range(25)]))
    [0, 10, 20, 23, 24]
    """

    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: KeepBest | None = None

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def keeps_all(self) -> bool:
        """True when no rule is set (nothing is ever dropped)."""
        return self.keep_last is None and self.keep_every is None and self.keep_best is None

    def select(self, checkpoints: Iterable[_HasStep]) -> set[int]:
        """The steps to keep out of ``checkpoints``."""
        ordered = sorted(checkpoints, key=lambda c: c.step)
        if self.keeps_all or not ordered:
            return {c.step for c in ordered}
        keep = {ordered[-1].step}
        if self.keep_last is not None:
            keep.update(c.step for c in ordered[-self.keep_last :])
        if self.keep_every is not None:
            keep.update(c.step for c in ordered if c.step % self.keep_every == 0)
        if self.keep_best is not None:
            keep.update(_best(ordered, self.keep_best))
        return keep


def _best(ordered: Sequence[_HasStep], rule: KeepBest) -> list[int]:
    scored = []
    for c in ordered:
        value = c.metadata.get(rule.metric)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            scored.append((value if rule.mode == "min" else -value, -c.step, c.step))
    return [step for *_, step in sorted(scored)[: rule.n]]
