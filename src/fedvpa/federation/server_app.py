"""The Flower ServerApp: reads the run config, runs ``MethodStrategy`` to the end.

``app`` is what ``flwr run .`` loads (``[tool.flwr.app.components]``); it takes its configuration
from ``context.run_config``. ``make_server_app`` builds the same app around an explicit
``FederationConfig`` for the in-process simulation (``runtime.run_federated``), and records the
outcome so that the caller can tell "finished" from "exited quietly with nothing".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedvpa.federation.strategy import FederationConfig, MethodStrategy


@dataclass
class ServerOutcome:
    """Filled in by the ServerApp thread; read by the caller after the simulation returns."""

    final: dict[str, Any] | None = None
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_server(grid: Grid, config: FederationConfig) -> dict[str, Any]:
    return MethodStrategy(config).run(grid)


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


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, FederationConfig.from_run_config(context.run_config))
