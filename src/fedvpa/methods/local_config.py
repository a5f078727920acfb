"""Local-optimisation settings shared by every method (what a client does each round)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fedvpa.errors import ConfigError


@dataclass(frozen=True)
class LocalConfig:
    """Client-side optimisation: paper default is 30 local steps per round."""

    local_steps: int = 30
    lr: float = 5e-4
    batch_size: int = 4  # context/query views (latent methods) or x16 pairs (reward heads)
    num_rounds: int = 50  # for schedules that depend on the round (temperature annealing)

    def __post_init__(self) -> None:
        for name in ("local_steps", "batch_size", "num_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", field=name)
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr!r}", field="lr")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LocalConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown local option(s): {', '.join(unknown)}", field=unknown[0])
        return cls(**values)
