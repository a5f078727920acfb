"""The Flower ServerApp: reads the run config, runs ``MethodStrategy`` to the end.

``app`` is what ``flwr run .`` loads (``[tool.flwr.app.components]``); it takes its configuration
from ``context.run_config``, which holds the same keys as ``conf/*.toml`` and ``fedvpa run``
(``[tool.flwr.app.config]`` declares every one with its default). ``make_server_app`` builds the
same app around an explicit ``FederationConfig`` for the in-process simulation
(``runtime.run_federated``), and records the outcome so that the caller can tell "finished" from
"exited quietly with nothing".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedvpa.federation.run_config import FederationConfig
from fedvpa.federation.transport import run_server


@dataclass
class ServerOutcome:
    """Filled in by the ServerApp thread; read by the caller after the simulation returns."""

    final: dict[str, Any] | None = None
    error: BaseException | None = None


def make_server_app(config: FederationConfig, outcome: ServerOutcome) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome.final = run_server(grid, config)
        except BaseException as exc:
            outcome.error = exc
            raise

    return server_app


def config_from_run_config(run_config: Mapping[str, Any]) -> FederationConfig:
    """``flwr run``'s run config -> the run: the keys are parsed and checked like ``fedvpa
    run``'s; the client tensors are ``data-path`` if given (a deployment whose SuperNodes hold
    their data), else prepared here from the data keys (through the embedding cache)."""
    from fedvpa.embeddings.pipeline import load_client_tensors
    from fedvpa.errors import ConfigError
    from fedvpa.experiment import (
        ExperimentConfig,
        check_clients_per_round,
        check_privacy_budget,
        prepare_clients,
    )

    exp = ExperimentConfig.from_flat(dict(run_config), source="run config")
    fed = exp.federation
    if fed.secure_aggregation:
        raise ConfigError(
            "SecAgg+ runs through `fedvpa run` in simulation (Flower's legacy layout), not "
            "`flwr run`",
            field="secure-aggregation",
        )
    if fed.data_path:
        path = Path(fed.data_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                "the ServerApp reads the client tensors here for their count and size",
                path=str(path),
                field="data-path",
            )
        clients = load_client_tensors(path)
    else:
        prepared = prepare_clients(exp.data, exp.embedding, fed.seed, progress=False)
        path, clients = prepared.path, prepared.clients
    check_clients_per_round(exp, clients)
    check_privacy_budget(exp, [fed.method], clients)
    return FederationConfig.from_experiment(
        exp,
        method=fed.method,
        input_dim=clients[0].context.dim,
        data_path=path,
        run_dir=fed.run_dir or f"runs/flwr-{fed.method}-seed{fed.seed}",
        num_clients=len(clients),
        resume=fed.resume,
        simulated=False,  # the nodes were started with their own partition ids
    )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, config_from_run_config(context.run_config))
