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

With client-level DP (``dp-noise-multiplier`` or ``dp-epsilon``) a client sends its *change*
of the weights, clipped to L2 norm ``C`` (``dp-clip-norm``, with Flower's clipping helper), and
the FedAvg weight 1 (its pair count would leak and unbalance the sensitivity); the server adds
the unmasked mean change to the weights it sent, and Flower's
``DifferentialPrivacyClientSideFixedClipping`` adds Gaussian noise of std ``z C / m`` to the
result. A clipped change has every entry within ``[-C, C]``, so SecAgg+'s quantisation range is
``C`` and can never clip it; the weights themselves random-walk under the noise (std about 1
per entry per round at epsilon 4 here) and left any fixed range within 1-3 rounds, which is why
this path does not mask weights and clip them with ``fixedclipping_mod`` as Flower's example
does. The server never holds an unclipped or an individual update; what it publishes (the
weights, the run log) is covered by the accountant of ``privacy/accounting.py`` (``m`` of the
seen clients sampled without replacement, no statistics releases). The noise is still added
by the server (central DP): SecAgg+ hides each update from it, DP bounds what the aggregate and
everything after it say about any one client.

Simulation only (the nodes are the seen clients; the unseen clients never train, so the final
weights are scored on every client in the driver, as their devices would score them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Context,
    GetPropertiesIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, clip_inputs_inplace

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError
from fedvpa.federation.client_app import cached_clients, cached_method
from fedvpa.federation.messages import encode_kwargs
from fedvpa.federation.registry import create_method
from fedvpa.methods.base import Arrays
from fedvpa.protocol import seeds
from fedvpa.protocol.client import train_step
from fedvpa.protocol.round import FederationError, sample_clients

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
    # Client-level DP: the resolved noise multiplier z (0 = off), the clipping norm C of a
    # client's update, delta, the largest epsilon the run may spend (0 = no limit), and
    # whether the noise is drawn from the run seed ("seed") or the OS ("os").
    dp_noise_multiplier: float = 0.0
    dp_clip_norm: float = 0.1  # as the dp-clip-norm key's default
    dp_delta: float = 1e-5
    dp_max_epsilon: float = 0.0
    dp_noise_source: str = "seed"

    @property
    def dp_enabled(self) -> bool:
        return self.dp_noise_multiplier > 0

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


def seen_clients(path: str) -> list[ClientTensors]:
    """The seen clients of a tensor file, in file order (node ``partition-id`` i is the i-th),
    read once per process through the main ClientApp's cache."""
    return [c for c in cached_clients(path) if not c.unseen]


class SecureClient(NumPyClient):
    """One seen client: the method's local step on the global weights, weights back only."""

    def __init__(self, partition_id: int):
        self.partition_id = partition_id

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """Which seen client this node is, for the server's seeded sampling."""
        return {"partition-id": self.partition_id}

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        keys = json.loads(str(config["array-keys"]))
        clients = seen_clients(str(config["data-path"]))
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
        if KEY_CLIPPING_NORM in config:  # DP: the clipped change, every client weighing 1
            out = [
                a - np.asarray(p, dtype=np.float64) for a, p in zip(out, parameters, strict=True)
            ]
            clip_inputs_inplace(out, float(config[KEY_CLIPPING_NORM]))
        worst = max(float(np.abs(a).max()) for a in out if a.size)
        # (a clipped change may exceed C by a rounding error: SecAgg+ clipping that is harmless)
        if worst > limit * (1 + 1e-6):
            raise ConfigError(
                f"a shared weight of magnitude {worst:.3g} is outside the SecAgg+ clipping "
                f"range {limit:g} (it would be clipped silently): raise "
                "SecureSettings.clipping_range",
                field="clipping-range",
            )
        # Under DP every client weighs 1: the sensitivity of the mean assumes equal weights, and
        # the pair count travels in the clear in the legacy protocol.
        weight = 1 if KEY_CLIPPING_NORM in config else int(update.num_examples)
        return out, weight, {}


def _client_fn(context: Context) -> Any:
    return SecureClient(int(context.node_config.get("partition-id", 0))).to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])


class SeededClientManager(SimpleClientManager):
    """Flower's client manager, sampling each round's clients as the round protocol does
    (``sample_clients`` on the seen clients' ids, from the run seed and the round).

    Flower's own manager draws with ``random`` over the nodes in the order they registered,
    which changes from run to run, so the same seed trained other clients each time. Here a
    SecAgg+ run trains exactly the clients the plain run with the same seed trains. Each node
    is asked once which seen client it is (``get_properties``)."""

    def __init__(self, seed: int, client_ids: Sequence[int]) -> None:
        super().__init__()
        self.seed, self.client_ids = seed, list(client_ids)  # client_ids[partition-id]
        self.server_round = 0  # set by the strategy before it samples
        self._partition: dict[str, int] = {}

    def _by_client(self) -> dict[int, ClientProxy]:
        from concurrent.futures import ThreadPoolExecutor

        unknown = [p for cid, p in self.clients.items() if cid not in self._partition]
        if unknown:
            with ThreadPoolExecutor(max_workers=min(32, len(unknown))) as pool:
                replies = pool.map(
                    lambda p: p.get_properties(GetPropertiesIns(config={}), None, 0), unknown
                )
                for proxy, reply in zip(unknown, replies, strict=True):
                    self._partition[proxy.cid] = int(reply.properties["partition-id"])
        return {self.client_ids[self._partition[c]]: p for c, p in self.clients.items()}

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Any = None
    ) -> list[ClientProxy]:
        self.wait_for(num_clients if min_num_clients is None else min_num_clients)
        by_client = self._by_client()
        if criterion is not None:
            by_client = {c: p for c, p in by_client.items() if criterion.select(p)}
        if num_clients > len(by_client):
            return []
        chosen = sample_clients(self.seed, self.server_round, sorted(by_client), num_clients)
        return [by_client[c] for c in chosen]


class SecureFedAvg(FedAvg):
    """Flower's legacy ``FedAvg`` behind SecAgg+, recording what the server was given."""

    def __init__(self, noise_seed: Callable[[int], int | None] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rounds: list[dict[str, Any]] = []
        self.latest: list[np.ndarray] | None = None
        # DP: the clients send clipped changes, added to the weights sent this round
        self.noise_seed = noise_seed
        self.sent: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        self.sent = parameters_to_ndarrays(parameters)
        if isinstance(client_manager, SeededClientManager):
            client_manager.server_round = server_round
        return super().configure_fit(server_round, parameters, client_manager)

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
        if aggregated is not None and self.noise_seed is not None and self.sent is not None:
            change = parameters_to_ndarrays(aggregated)
            aggregated = ndarrays_to_parameters(
                [np.asarray(w, np.float64) + d for w, d in zip(self.sent, change, strict=True)]
            )
        if aggregated is not None:
            self.latest = parameters_to_ndarrays(aggregated)
        if self.noise_seed is not None:
            # Flower's DP wrapper adds its noise with numpy's global generator right after this
            # returns: seeded per round from the run seed, the noise is reproducible; None = OS
            # entropy (dp-noise-source = "os").
            seed = self.noise_seed(server_round)
            if seed is not None:
                np.random.seed(seed % 2**32)
        return aggregated, metrics


class NoisedMeanRecorder(DifferentialPrivacyClientSideFixedClipping):
    """Flower's central-DP wrapper, keeping the noised mean it hands on (what the server
    publishes) for the run's final weights."""

    def __init__(self, inner: SecureFedAvg, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.latest: list[np.ndarray] | None = None

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        if aggregated is not None:
            self.latest = parameters_to_ndarrays(aggregated)
        return aggregated, metrics


@dataclass
class SecureOutcome:
    arrays: Arrays | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    privacy: dict[str, Any] | None = None  # the spend, as final.json's "privacy" under DP
    stopped: str | None = None  # why fewer rounds ran than asked (dp-max-epsilon)


def privacy_plan(settings: SecureSettings, num_seen: int) -> tuple[int, list[float], str | None]:
    """Rounds to run, epsilon after each, and why the run stops early if it does. Each round
    samples ``clients-per-round`` of the seen clients without replacement and releases only the
    noised mean (no statistics), so a round is the accountant's event with 0 releases; a round
    that would spend more than ``dp-max-epsilon`` is not run."""
    from fedvpa.privacy.accounting import Accountant

    if not settings.dp_enabled:
        return settings.num_rounds, [], None
    accountant = Accountant(
        settings.dp_noise_multiplier, num_seen, settings.clients_per_round, settings.dp_delta
    )
    spent: list[float] = []
    for server_round in range(1, settings.num_rounds + 1):
        if settings.dp_max_epsilon > 0 and accountant.epsilon(0) > settings.dp_max_epsilon:
            return (
                server_round - 1,
                spent,
                f"dp-max-epsilon {settings.dp_max_epsilon:g} reached: round {server_round} "
                f"would spend more (epsilon {spent[-1] if spent else 0.0:.3f} after round "
                f"{server_round - 1})",
            )
        accountant.compose(0)
        spent.append(accountant.epsilon())
    return settings.num_rounds, spent, None


def make_server_app(
    settings: SecureSettings,
    initial: Arrays,
    num_nodes: int,
    max_weight: float,
    outcome: SecureOutcome,
    num_rounds: int | None = None,
) -> ServerApp:
    """The legacy ServerApp: SecAgg+ under ``DefaultWorkflow``, Flower's central-DP wrapper
    around the FedAvg when DP is on; ``num_rounds`` (default: the settings') is how many rounds
    run, fewer where ``dp-max-epsilon`` stops the run early."""
    num_rounds = settings.num_rounds if num_rounds is None else num_rounds
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
            "clipping-range": settings.dp_clip_norm
            if settings.dp_enabled
            else settings.clipping_range,
        }

    def noise_seed(server_round: int) -> int | None:
        if settings.dp_noise_source == "os":
            return None
        return seeds.derive_seed(settings.seed, server_round, 0, seeds.STREAM_PRIVACY)

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            strategy = SecureFedAvg(
                noise_seed=noise_seed if settings.dp_enabled else None,
                fraction_fit=settings.clients_per_round / num_nodes,
                fraction_evaluate=0.0,
                min_fit_clients=settings.clients_per_round,
                min_available_clients=num_nodes,
                on_fit_config_fn=fit_config,
                initial_parameters=ndarrays_to_parameters([initial[k] for k in keys]),
                accept_failures=False,
            )
            published: SecureFedAvg | NoisedMeanRecorder = strategy
            if settings.dp_enabled:
                published = NoisedMeanRecorder(
                    strategy,
                    noise_multiplier=settings.dp_noise_multiplier,
                    clipping_norm=settings.dp_clip_norm,
                    num_sampled_clients=settings.clients_per_round,
                )
            legacy = LegacyContext(
                context=context,
                config=ServerConfig(num_rounds=num_rounds),
                strategy=published,
                client_manager=SeededClientManager(
                    settings.seed, [c.client_id for c in seen_clients(settings.data_path)]
                ),
            )
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(
                    num_shares=settings.num_shares,
                    reconstruction_threshold=settings.reconstruction_threshold,
                    max_weight=max_weight,
                    # a clipped change lies in [-C, C]: the tightest range that never clips it
                    clipping_range=settings.dp_clip_norm
                    if settings.dp_enabled
                    else settings.clipping_range,
                    quantization_range=settings.quantization_range,
                )
            )
            workflow(grid, legacy)
            outcome.rounds = list(strategy.rounds)
            if published.latest is not None:
                outcome.arrays = {
                    k: np.asarray(v, dtype=np.asarray(initial[k]).dtype)
                    for k, v in zip(keys, published.latest, strict=True)
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

    seen = seen_clients(settings.data_path)
    if settings.clients_per_round > len(seen):
        raise ConfigError(
            f"clients-per-round {settings.clients_per_round} > {len(seen)} seen clients",
            field="clients-per-round",
        )
    method = create_method(settings.method, settings.method_kwargs)
    initial = method.init_server_state(settings.seed).arrays
    max_weight = settings.max_weight or float(max(c.num_examples for c in seen))
    if settings.dp_enabled:
        max_weight = 1.0  # every client weighs 1 under DP
    num_rounds, spent, stopped = privacy_plan(settings, len(seen))
    if num_rounds < 1:
        raise ConfigError(
            f"{stopped}: not even one round fits; raise dp-max-epsilon or the noise",
            field="dp-max-epsilon",
        )
    outcome = SecureOutcome(stopped=stopped)
    dp_note = (
        f", client-level DP z {settings.dp_noise_multiplier:g} C {settings.dp_clip_norm:g}"
        if settings.dp_enabled
        else ""
    )
    log(
        f"SecAgg+ {settings.method}: {len(seen)} seen clients, {settings.clients_per_round} a "
        f"round, {num_rounds} rounds{dp_note}"
    )
    server_app = make_server_app(settings, initial, len(seen), max_weight, outcome, num_rounds)
    failed = simulate_apps(server_app, client_app, len(seen), flwr_home=flwr_home)
    if failed is not None and outcome.error is None:
        raise FederationError(f"SecAgg+ simulation failed: {failed}") from failed
    if outcome.error is not None:
        if isinstance(outcome.error, (FederationError, ConfigError)):
            raise outcome.error
        raise FederationError(f"SecAgg+ server failed: {outcome.error!r}") from outcome.error
    if outcome.arrays is None or len(outcome.rounds) != num_rounds:
        raise FederationError(f"SecAgg+ ended after {len(outcome.rounds)} of {num_rounds} rounds")
    if settings.dp_enabled:
        for row, epsilon in zip(outcome.rounds, spent, strict=True):
            row["epsilon"] = epsilon
        outcome.privacy = {
            "epsilon": spent[-1],
            "delta": settings.dp_delta,
            "noise_multiplier": settings.dp_noise_multiplier,
            "clip_norm": settings.dp_clip_norm,
            "rounds_charged": num_rounds,
            "clipping": "client-side, of the change of the weights, before SecAgg+ masking",
        }
    if stopped:
        log(f"SecAgg+ stopped: {stopped}")
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
        "final_round": len(outcome.rounds),
        "privacy": outcome.privacy,
        "stopped": outcome.stopped,
        "eval": flatten_report(report),
        "secure_aggregation": {
            "protocol": "SecAgg+ (Flower secaggplus_mod + SecAggPlusWorkflow)",
            "num_shares": settings.num_shares,
            "reconstruction_threshold": settings.reconstruction_threshold,
            "clipping_range": settings.dp_clip_norm
            if settings.dp_enabled
            else settings.clipping_range,
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
