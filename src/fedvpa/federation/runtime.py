"""``run_federated``: one federated run in Flower's simulation engine, from Python.

We use ``flwr.simulation.run_simulation`` (deprecated upstream, but in-process and free of the
detached SuperLink that ``flwr run . local`` leaves behind). The ServerApp is built around an
explicit ``FederationConfig``; the ClientApp is the importable ``client_app.app`` so each Ray actor
imports it (and caches the client data) once. Clients receive every setting they need (method
reference, data path, state folder) inside the messages, so no run config has to reach them.

Flower ends a run with exit status 0 even when every ClientApp raised, so success here means:
the ServerApp finished, ``final.json`` exists, and no round lacked replies (the protocol raises
``FederationError`` on that).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedvpa.errors import ConfigError
from fedvpa.federation.environment import FLOWER_ENV
from fedvpa.federation.registry import method_reference
from fedvpa.federation.run_config import FederationConfig
from fedvpa.federation.server_app import ServerOutcome, make_server_app
from fedvpa.protocol.round import FederationError
from fedvpa.protocol.run_folder import FINAL_FILE, RunFolder

DEFAULT_BACKEND: dict[str, Any] = {"num_cpus": 2, "client_num_cpus": 1, "client_num_gpus": 0.0}


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment Flower needs here: no telemetry, no update check, no dependency
    re-install (it would pull a CUDA torch), and a writable FLWR_HOME."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    return {**FLOWER_ENV, "FLWR_HOME": str(flwr_home)}


def backend_config(backend: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ray: ``num_cpus`` in all, ``client_num_cpus`` per actor (2 and 1: two actors on 2 cores)."""
    merged = {**DEFAULT_BACKEND, **dict(backend or {})}
    unknown = set(merged) - set(DEFAULT_BACKEND)
    if unknown:
        raise ConfigError(f"unknown backend keys {sorted(unknown)}", field="backend")
    return {
        "client_resources": {
            "num_cpus": float(merged["client_num_cpus"]),
            "num_gpus": float(merged["client_num_gpus"]),
        },
        "init_args": {
            "num_cpus": int(merged["num_cpus"]),
            "num_gpus": 0 if float(merged["client_num_gpus"]) == 0 else 1,
            "include_dashboard": False,
        },
    }


def simulate_apps(
    server_app: Any,
    client_app: Any,
    num_supernodes: int,
    *,
    flwr_home: Path,
    backend: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> Exception | None:
    """Run a ServerApp and a ClientApp in Flower's simulation engine (Ray); returns what
    ``run_simulation`` raised, if anything. The apps record their own outcome: Flower exits
    quietly when the server or every client failed, so the caller decides what "finished" means.
    """
    os.environ.update(flower_environment(flwr_home))
    # Imported late: flwr.simulation pulls in Ray, and the env above must be set first.
    from flwr.simulation import run_simulation

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_name="ray",
            backend_config=backend_config(backend),  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    except Exception as exc:
        return exc
    return None


def num_nodes(config: FederationConfig) -> int:
    """Virtual SuperNodes of a simulation: one per ``clients-per-node`` clients."""
    return math.ceil(config.num_clients / config.settings.clients_per_node)


def run_federated(
    config: FederationConfig,
    backend: Mapping[str, Any] | None = None,
    *,
    flwr_home: Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run (or resume, ``config.settings.resume``) a federated simulation; return the final
    metrics (also in final.json).

    ``config.num_clients`` must equal the number of clients in ``config.data_path``, seen and
    unseen (unseen ones only evaluate); each virtual node holds ``clients-per-node`` of them.
    Raises ``ConfigError`` for bad arguments and ``FederationError`` when the run did not
    produce results.
    """
    if config.settings.secure_aggregation:
        raise ConfigError(
            "SecAgg+ runs through `fedvpa run` (Flower's legacy SecAgg+ apps), not here",
            field="secure-aggregation",
        )
    run_dir = Path(config.run_dir)
    if not Path(config.data_path).exists():
        raise ConfigError("client tensor file not found", path=config.data_path, field="data-path")
    method_reference(config.method)  # fail fast, before Ray starts, on an unknown method
    json.dumps(config.method_kwargs)  # kwargs must survive the trip to the clients
    # The same checks the server makes, before Ray starts: a refused resume costs nothing.
    RunFolder(run_dir, config.identity(), config.num_rounds).check(config.settings.resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    from fedvpa.federation.client_app import app as client_app

    outcome = ServerOutcome()
    failed = simulate_apps(
        make_server_app(config, outcome),
        client_app,
        num_nodes(config),
        flwr_home=flwr_home or run_dir / ".flwr",
        backend=backend,
        verbose=verbose,
    )
    if failed is not None and outcome.error is None:
        raise FederationError(f"simulation failed: {failed}") from failed
    if outcome.error is not None:
        if isinstance(outcome.error, (FederationError, ConfigError)):
            raise outcome.error
        raise FederationError(f"server failed: {outcome.error!r}") from outcome.error
    final_path = run_dir / FINAL_FILE
    if outcome.final is None or not final_path.exists():
        raise FederationError(f"the run ended without results ({final_path} missing)")
    return outcome.final
