"""One federated run, resolved: the user's federation keys plus what the caller worked out.

Built by :meth:`FederationConfig.from_experiment` from the same keys whichever way a run starts
(``fedvpa run``, ``fedvpa compare``, ``flwr run``'s ServerApp, the Python API).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvpa.config import FederationSettings, to_flat
from fedvpa.errors import ConfigError
from fedvpa.federation.registry import create_method

if TYPE_CHECKING:
    from fedvpa.experiment import ExperimentConfig


@dataclass(frozen=True)
class FederationConfig:
    """One federated run, resolved: the user's federation keys plus what the caller worked out
    (the method's full settings, where the client tensors and the run folder are, how many
    clients). Built by :meth:`from_experiment` from the same keys whichever way a run starts."""

    settings: FederationSettings  # settings.method is the method this run trains
    method_kwargs: dict[str, Any]
    data_path: str
    run_dir: str
    num_clients: int

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ConfigError("must be non-empty", field="run-dir")
        if self.num_clients < 1:
            raise ConfigError("must be >= 1", field="num-clients")

    @classmethod
    def from_experiment(
        cls,
        exp: ExperimentConfig,
        *,
        method: str,
        input_dim: int,
        data_path: str | Path,
        run_dir: str | Path,
        num_clients: int,
        resume: bool = False,
    ) -> FederationConfig:
        settings = replace(exp.federation, method=method, baseline="", resume=bool(resume))
        return cls(
            settings=settings,
            method_kwargs=exp.method_kwargs(input_dim),
            data_path=str(Path(data_path).expanduser().resolve()),
            run_dir=str(Path(run_dir).expanduser().resolve()),
            num_clients=int(num_clients),
        )

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def num_rounds(self) -> int:
        return self.settings.num_server_rounds

    @property
    def state_dir(self) -> str:
        chosen = self.settings.client_state_dir
        if chosen.lower() == "none":
            return ""
        return chosen or str(Path(self.run_dir) / "client_state")

    def method_effective(self) -> dict[str, Any]:
        """The method's settings with its defaults filled in (JSON-normalised)."""
        method = create_method(self.method, self.method_kwargs)
        return json.loads(json.dumps(method.effective_config()))

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues, including the method's
        defaults: a checkpoint written under other defaults must not be continued."""
        s = self.settings
        return {
            "method": s.method,
            "seed": s.seed,
            "clients_per_round": s.clients_per_round,
            "eval_every": s.eval_every,
            "min_reply_fraction": s.min_reply_fraction,
            "client_state_dir": s.client_state_dir,
            "data_path": self.data_path,
            "run_dir": self.run_dir,
            "num_clients": self.num_clients,
            "method_effective": self.method_effective(),
            # Noise and accounting must not change mid-run (the spend would be meaningless).
            "dp": {k: v for k, v in to_flat(s).items() if k.startswith("dp-")},
        }

    def record(self) -> dict[str, Any]:
        """What the run folder's ``config.json`` holds: every key of the run, flat."""
        return {
            **to_flat(self.settings),
            "data-path": self.data_path,
            "run-dir": self.run_dir,
            "num-clients": self.num_clients,
            "method-kwargs": self.method_kwargs,
        }
