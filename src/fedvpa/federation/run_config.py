"""One federated run, resolved: the user's federation keys plus what the caller worked out.

Built by :meth:`FederationConfig.from_experiment` from the same keys whichever way a run starts
(``fedvpa run``, ``fedvpa compare``, ``flwr run``'s ServerApp, the Python API).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvpa.config import FederationSettings, to_flat
from fedvpa.errors import ConfigError
from fedvpa.federation.registry import create_method

if TYPE_CHECKING:
    from fedvpa.experiment import ExperimentConfig

# Virtual nodes an automatic `clients-per-node` aims at in a simulation (at least; more on
# machines with more cores, so that every core has a node to run).
AUTO_SIMULATED_NODES = 10


def resolve_clients_per_node(
    requested: int, num_clients: int, *, simulated: bool, secure_aggregation: bool = False
) -> int:
    """The clients each node holds. ``requested`` > 0 is kept; 0 (auto) gives one client per
    node where a node stands for a device (``flwr run``, SecAgg+, whose legacy protocol masks per
    node), and in a simulation enough clients per node for ``max(10, CPU cores)`` nodes: the
    per-message cost of Flower and Ray is then paid per node, not per client (at 100 clients,
    10 per node made the main job 1.35x faster; at 1,000, 100 per node cut the no-op round 4x),
    and every client still trains and evaluates exactly as alone."""
    if requested > 0:
        return requested
    if not simulated or secure_aggregation:
        return 1
    nodes = max(AUTO_SIMULATED_NODES, os.cpu_count() or 1)
    return max(1, math.ceil(num_clients / nodes))


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
        if self.settings.clients_per_node == 0:  # built directly, not by from_experiment
            per_node = resolve_clients_per_node(
                0,
                self.num_clients,
                simulated=True,
                secure_aggregation=self.settings.secure_aggregation,
            )
            object.__setattr__(self, "settings", replace(self.settings, clients_per_node=per_node))

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
        simulated: bool = True,
    ) -> FederationConfig:
        """``simulated``: the run is this process's simulation (``fedvpa run``, ``compare``),
        not ``flwr run`` on nodes someone else started; it decides what ``clients-per-node = 0``
        (auto) means."""
        fed = exp.federation
        per_node = resolve_clients_per_node(
            fed.clients_per_node,
            int(num_clients),
            simulated=simulated,
            secure_aggregation=fed.secure_aggregation,
        )
        settings = replace(
            fed, method=method, baseline="", resume=bool(resume), clients_per_node=per_node
        )
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
            **self.data_identity(),
        }

    def data_identity(self) -> dict[str, str]:
        """The digest of what the client tensors were built from (the partition and the
        backbone; ``experiment.prepare_clients`` writes it beside them), where there is one.

        The tensors' path stays the same when their data file or checkpoint is edited in place
        (they are then rebuilt under it), so the path alone would let a resumed run continue on
        other data. Tensors prepared elsewhere (a deployment's ``data-path``) have no digest."""
        stamp = Path(self.data_path + ".partition")
        if not stamp.is_file():
            return {}
        return {"data_digest": stamp.read_text().strip()}

    def record(self) -> dict[str, Any]:
        """What the run folder's ``config.json`` holds: every key of the run, flat."""
        return {
            **to_flat(self.settings),
            "data-path": self.data_path,
            "run-dir": self.run_dir,
            "num-clients": self.num_clients,
            "method-kwargs": self.method_kwargs,
        }
