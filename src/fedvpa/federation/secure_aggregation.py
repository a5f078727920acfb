"""Secure aggregation of the shared weights with Flower's SecAgg+ (``secaggplus_mod`` on the
clients, ``SecAggPlusWorkflow`` on the server).

In Flower 1.42 SecAgg+ exists only for the legacy message layout (``NumPyClient`` and a legacy
``Strategy`` run by ``DefaultWorkflow``), so this is a second, small pair of apps beside
``client_app.py`` / ``server_app.py``, not a switch inside them. The clients run the same local
step as every other runtime (``protocol.client.train_step``, same seeds); what changes is what
the server sees: each client uploads its weights masked with pairwise and private masks, and the
server can only unmask their weighted *sum*. ``SecureFedAvg`` checks that: every result it is
handed carries the one aggregate, never an individual update.

What it hides and what it does not:

- hidden: every client's updated weights (the server learns the weighted mean of the round's
  clients only);
- not hidden: who took part, each client's ``num_examples`` (the FedAvg weight, sent in the
  clear by the legacy protocol) and anything a method sends besides its weights. So only methods
  whose round is weights-only and whose aggregation is the plain weighted mean qualify
  (``SECURE_METHODS``: FedAvg-BT); the latent methods also send posterior statistics the mixture
  prior needs per client, which SecAgg+ cannot sum away; there client-level DP (``privacy/``) is
  the protection.
- quantisation: a client's weights, scaled by ``n_i / max_weight``, are clipped to
  ``clipping_range`` and quantised to ``quantization_range`` levels before masking; a weight
  outside the range is refused here (SecAgg+ would clip it silently), and the aggregate differs
  from the exact mean by about ``2 * clipping_range / quantization_range * max_weight / n_i``
  per entry (so ``max_weight`` defaults to the largest client's count, not Flower's 1000).

Simulation only (the nodes are the seen clients; the unseen clients never train, so the final
weights are scored on every client in the driver, as their devices would score them).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError
from fedvpa.federation.client_app import cached_clients, cached_method
from fedvpa.federation.messages import encode_kwargs
from fedvpa.federation.registry import create_method
from fedvpa.methods.base import Arrays
from fedvpa.protocol import seeds
from fedvpa.protocol.client import train_step
from fedvpa.protocol.round import FederationError

SECURE_METHODS = ("fedavg-bt",)  # weights-only rounds, plain weighted-mean aggregation


@dataclass(frozen=True)
class SecureSettings:
    """One SecAgg+ run: the method, the seen clients' tensor file, rounds and SecAgg+ knobs."""

    method: str
    method_kwargs: dict[str, Any]
    data_path: str
    num_rounds: int
    clients_per_round: int
    seed: int = 0
    num_shares: int = 3  # SecAgg+ shares per client key (neighbours in the masking graph)
    reconstruction_threshold: int = 2  # shares that recover a dropped client's masks
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    # Largest FedAvg weight (num_examples) SecAgg+ expects; a client's weights are scaled by
    # n_i / max_weight before quantisation, so a loose bound costs precision. None = the
    # largest seen client's count in the data file.
    max_weight: float | None = None

    def __post_init__(self) -> None:
        if self.method not in SECURE_METHODS:
            raise ConfigError(
                f"{self.method} sends more than weights each round; SecAgg+ covers "
                f"{', '.join(SECURE_METHODS)} (use client-level DP for the others)",
                field="method",
            )
        if not 2 <= self.reconstruction_threshold <= self.num_shares:
            raise ConfigError(
                f"need 2 <= reconstruction threshold <= shares, got "
                f"{self.reconstruction_threshold} and {self.num_shares}",
                field="num-shares",
            )
        if self.clients_per_round < self.num_shares:
            raise ConfigError(
                f"SecAgg+ splits each client's key into {self.num_shares} shares among the "
                f"round's clients: needs at least {self.num_shares} a round, got "
                f"{self.clients_per_round}",
                field="clients-per-round",
            )


def _seen_clients(path: str) -> list[ClientTensors]:
    """The seen clients of a tensor file, in file order (node ``partition-id`` i is the i-th),
    read once per process through the main ClientApp's cache."""
    return [c for c in cached_clients(path) if not c.unseen]


class SecureClient(NumPyClient):
    """One seen client: the method's local step on the global weights, weights back only."""

    def __init__(self, partition_id: int):
        self.partition_id = partition_id

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        keys = json.loads(str(config["array-keys"]))
        clients = _seen_clients(str(config["data-path"]))
        client = clients[self.partition_id]
        method = cached_method(str(config["method"]), str(config["method-kwargs"]))
        server_round = int(config["server-round"])
        update, _ = train_step(
            method,
            dict(zip(keys, parameters, strict=True)),
            {},
            client,
            {},
            server_round,
            seeds.derive_seed(
                int(config["seed"]), server_round, client.client_id, seeds.STREAM_TRAIN
            ),
        )
        if update.stats:
            raise ConfigError("the method sent statistics besides its weights", field="method")
        limit = float(config["clipping-range"])
        out = [np.asarray(update.arrays[k], dtype=np.float64) for k in keys]
        worst = max(float(np.abs(a).max()) for a in out if a.size)
        if worst > limit:
            raise ConfigError(
                f"a shared weight of magnitude {worst:.3g} is outside the SecAgg+ clipping "
                f"range {limit:g} (it would be clipped silently): raise "
                "SecureSettings.clipping_range",
                field="clipping-range",
            )
        return out, int(update.num_examples), {}


def _client_fn(context: Context) -> Any:
    return SecureClient(int(context.node_config.get("partition-id", 0))).to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])


class SecureFedAvg(FedAvg):
    """Flower's legacy ``FedAvg`` behind SecAgg+, recording what the server was given."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict[str, Any]] = []
        self.latest: list[np.ndarray] | None = None

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        arrays = [parameters_to_ndarrays(res.parameters) for _, res in results]
        distinct = sum(
            any(not np.array_equal(a, b) for a, b in zip(arrays[0], other, strict=True))
            for other in arrays[1:]
        )
        self.rounds.append(
            {
                "round": server_round,
                "clients": len(results),
                "failures": len(failures),
                "distinct_updates_seen": 1 + distinct if arrays else 0,
            }
        )
        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        if aggregated is not None:
            self.latest = parameters_to_ndarrays(aggregated)
        return aggregated, metrics


@dataclass
class SecureOutcome:
    arrays: Arrays | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None


def make_server_app(
    settings: SecureSettings,
    initial: Arrays,
    num_nodes: int,
    max_weight: float,
    outcome: SecureOutcome,
) -> ServerApp:
    keys = sorted(initial)
    server_app = ServerApp()

    def fit_config(server_round: int) -> dict[str, Any]:
        return {
            "method": settings.method,
            "method-kwargs": encode_kwargs(settings.method_kwargs),
            "data-path": settings.data_path,
            "array-keys": json.dumps(keys),
            "server-round": server_round,
            "seed": settings.seed,
            "clipping-range": settings.clipping_range,
        }

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            random.seed(settings.seed)  # the legacy client manager samples with `random`
            strategy = SecureFedAvg(
                fraction_fit=settings.clients_per_round / num_nodes,
                fraction_evaluate=0.0,
                min_fit_clients=settings.clients_per_round,
                min_available_clients=num_nodes,
                on_fit_config_fn=fit_config,
                initial_parameters=ndarrays_to_parameters([initial[k] for k in keys]),
                accept_failures=False,
            )
            legacy = LegacyContext(
                context=context,
                config=ServerConfig(num_rounds=settings.num_rounds),
                strategy=strategy,
            )
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(
                    num_shares=settings.num_shares,
                    reconstruction_threshold=settings.reconstruction_threshold,
                    max_weight=max_weight,
                    clipping_range=settings.clipping_range,
                    quantization_range=settings.quantization_range,
                )
            )
            workflow(grid, legacy)
            outcome.rounds = list(strategy.rounds)
            if strategy.latest is not None:
                outcome.arrays = {
                    k: np.asarray(v, dtype=np.asarray(initial[k]).dtype)
                    for k, v in zip(keys, strategy.latest, strict=True)
                }
        except BaseException as exc:
            outcome.error = exc
            raise

    return server_app


def run_secure_aggregation(
    settings: SecureSettings,
    *,
    flwr_home: Path,
    log: Callable[[str], None] = print,
) -> SecureOutcome:
    """``num_rounds`` rounds of the method with SecAgg+ in Flower's simulation engine, one
    SuperNode per seen client; ``outcome.arrays`` are the final global weights."""
    from fedvpa.federation.runtime import simulate_apps

    seen = _seen_clients(settings.data_path)
    if settings.clients_per_round > len(seen):
        raise ConfigError(
            f"clients-per-round {settings.clients_per_round} > {len(seen)} seen clients",
            field="clients-per-round",
        )
    method = create_method(settings.method, settings.method_kwargs)
    initial = method.init_server_state(settings.seed).arrays
    max_weight = settings.max_weight or float(max(c.num_examples for c in seen))
    outcome = SecureOutcome()
    log(
        f"SecAgg+ {settings.method}: {len(seen)} seen clients, {settings.clients_per_round} a "
        f"round, {settings.num_rounds} rounds"
    )
    server_app = make_server_app(settings, initial, len(seen), max_weight, outcome)
    failed = simulate_apps(server_app, client_app, len(seen), flwr_home=flwr_home)
    if failed is not None and outcome.error is None:
        raise FederationError(f"SecAgg+ simulation failed: {failed}") from failed
    if outcome.error is not None:
        if isinstance(outcome.error, (FederationError, ConfigError)):
            raise outcome.error
        raise FederationError(f"SecAgg+ server failed: {outcome.error!r}") from outcome.error
    if outcome.arrays is None or len(outcome.rounds) != settings.num_rounds:
        raise FederationError(
            f"SecAgg+ ended after {len(outcome.rounds)} of {settings.num_rounds} rounds"
        )
    return outcome


def run_secure_method(
    settings: SecureSettings,
    clients: Sequence[ClientTensors],
    run_dir: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``fedvpa run --set secure-aggregation=true``: one method with SecAgg+, its final weights
    scored on every client (seen and unseen, as their devices would score them), written to
    ``run_dir/final.json`` in the shape of a Flower run's (``runner.method_results`` reads it)."""
    import time

    from fedvpa.evaluation.accuracy import evaluate, flatten_report
    from fedvpa.protocol import run_folder

    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcome = run_secure_aggregation(settings, flwr_home=run_dir / ".flwr", log=log)
    seconds = time.perf_counter() - t0
    method = create_method(settings.method, settings.method_kwargs)
    report = evaluate(method.predictor(outcome.arrays or {}), clients)
    final = {
        "method": settings.method,
        "final_round": settings.num_rounds,
        "eval": flatten_report(report),
        "secure_aggregation": {
            "protocol": "SecAgg+ (Flower secaggplus_mod + SecAggPlusWorkflow)",
            "num_shares": settings.num_shares,
            "reconstruction_threshold": settings.reconstruction_threshold,
            "clipping_range": settings.clipping_range,
            "quantization_range": settings.quantization_range,
            "rounds": outcome.rounds,
            "server_saw_only_aggregates": all(
                r["distinct_updates_seen"] == 1 for r in outcome.rounds
            ),
            "seconds": round(seconds, 1),
        },
    }
    run_folder.write_json(run_dir / "final.json", final)
    return final
