"""Would the server find the user types if it clustered where population inference puts clients?

``num-prototypes = "auto"`` chooses the number of groups by the best k-means silhouette over
K = 2 .. 8 on the clients' posterior means (the encoder's). On four user types it does not pick
4 (README, "Known problems"). This benchmark runs a method in process (the Flower runtime's
protocol and seeds, ``protocol/in_process.py``) and, at the rounds asked for, places every seen
client two ways under that round's evaluated model:

- ``encoder``: the set encoder's posterior mean of the client's labelled pairs (what the
  clients send today);
- ``population``: the posterior mean under the population of posterior means the server keeps
  (``latent-inference``'s population, what evaluation reads);

then prints, per placement, the silhouette choice of K (``model/prototypes.choose_num_groups``),
the silhouette per K, the adjusted Rand index of k-means with the true number of types against
the types, and the silhouette of the true types. Every seen client is placed (a census the
federation does not run: the server hears from 10 clients a round), so this measures what the
placements carry, not a protocol.

    .venv/bin/python benchmarks/group_choice.py --config conf/synthetic-4.toml --seeds 0 1 2 \
        --rounds 10 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from fedvpa.config import load_toml
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import create_method
from fedvpa.methods.variational import VariationalMethod
from fedvpa.model.prototypes import choose_num_groups
from fedvpa.protocol.in_process import run_in_process


class StopRun(Exception):
    """Raised after the last asked round: the rest of the run is not needed."""


def placements(method: VariationalMethod, state: Any, clients: list[Any]) -> dict[str, np.ndarray]:
    """Each seen client's encoder mean and, where the server holds a population, its
    population-posterior mean, under the weights the round evaluates."""
    arrays = method.evaluation_arrays(state)
    out = {"encoder": np.stack([method.latent_stats(arrays, c)["mu"] for c in clients])}
    if "population_mu" in arrays:
        predictor = method.predictor(arrays)
        out["population"] = np.stack([predictor.latent(c).numpy() for c in clients])
    return out


def describe(points: np.ndarray, types: np.ndarray, k_max: int, seed: int) -> dict[str, Any]:
    k, scores = choose_num_groups(points, k_max, seed)
    num_types = len(set(types.tolist()))
    labels = KMeans(n_clusters=num_types, n_init=10, random_state=seed).fit_predict(points)
    return {
        "chosen_k": k,
        "silhouette_per_k": {str(j): round(v, 3) for j, v in scores.items()},
        "ari_at_true_k": round(float(adjusted_rand_score(types, labels)), 3),
        "silhouette_of_types": round(float(silhouette_score(points, types)), 3),
    }


def latent_run(
    flat: dict[str, Any], method_name: str, seed: int
) -> tuple[ExperimentConfig, list[Any], VariationalMethod]:
    """The experiment (evaluation left to the caller), its clients and a latent method."""
    exp = ExperimentConfig.from_flat({**flat, "seed": seed, "eval-every": 10**6}, source="bench")
    prepared = prepare_clients(exp.data, exp.embedding, seed, progress=False)
    method = create_method(method_name, exp.method_kwargs(prepared.clients[0].context.dim))
    if not isinstance(method, VariationalMethod):
        raise ConfigError(f"{method_name} has no latent z to group", field="method")
    return exp, prepared.clients, method


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The options this benchmark and ``group_z.py`` share."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", required=True, help="a conf/*.toml experiment file")
    parser.add_argument("--method", default="fedvpa-gp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser


def run(flat: dict[str, Any], method_name: str, seed: int, rounds: list[int]) -> list[dict]:
    probe = ExperimentConfig.from_flat({**flat, "seed": seed}, source="bench")
    last = probe.federation.num_server_rounds
    if not rounds or min(rounds) < 1 or max(rounds) > last:
        # a round the run never reaches would print nothing, silently
        raise ConfigError(f"rounds must lie in 1 .. {last} (num-server-rounds), got {rounds}")
    exp, clients, method = latent_run(flat, method_name, seed)
    seen = [c for c in clients if not c.unseen]
    types = np.array([c.type_index for c in seen])
    k_max = min(method.cfg.max_groups, method.cfg.latent_dim)
    rows: list[dict] = []

    def on_round(row: dict[str, Any], protocol: Any) -> None:
        r = row["round"]
        if r in rounds:
            found = placements(method, protocol.state, seen)
            entry = {"data": str(flat.get("data")), "seed": seed, "round": r}
            entry |= {name: describe(x, types, k_max, seed) for name, x in found.items()}
            print(json.dumps(entry), flush=True)
            rows.append(entry)
        if r >= max(rounds):
            raise StopRun

    settings = replace(exp.federation, method=method_name)
    with contextlib.suppress(StopRun):
        run_in_process(method, clients, settings, on_round)
    return rows


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--rounds", type=int, nargs="+", default=[10, 30])
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead on 2 cores
    try:
        flat = load_toml(args.config)
        for seed in args.seeds:
            run(flat, args.method, seed, sorted(set(args.rounds)))
    except ConfigError as exc:
        print(f"group_choice: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
