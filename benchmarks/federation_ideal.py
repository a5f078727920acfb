"""Is the ideal personalised accuracy out of reach because of the data, or because of the model?

For each experiment file and seed, prints next to each other:
- the ideal of ``fedvpa headroom`` on the partition (probes fitted out of fold on every pair of
  every client, scored on simulated clients at the seen / unseen clients' k);
- the same Bayes-optimal predictor restricted to what the federation holds
  (``headroom.federation_ideal``: probes fitted on the seen clients' labelled pairs only, each
  real client scored on its own test pairs with its type read from its own pairs), with the
  type inferred and with the type given.
If the two ideals agree, a federated method below them is short of type inference, not of data.

    .venv/bin/python benchmarks/federation_ideal.py conf/plural-4.toml conf/synthetic-4.toml \
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fedvpa.config import load_toml
from fedvpa.errors import ConfigError
from fedvpa.evaluation.headroom import client_headroom, federation_ideal
from fedvpa.experiment import ExperimentConfig, prepare_clients

COLUMNS = (
    ("ideal_seen", "headroom ideal, seen"),
    ("seen", "matched, seen"),
    ("seen_known_type", "matched, type given, seen"),
    ("ideal_unseen", "headroom ideal, unseen"),
    ("unseen", "matched, unseen"),
    ("unseen_known_type", "matched, type given, unseen"),
)


def measure(config: str, seed: int, trials: int) -> dict[str, float]:
    exp = ExperimentConfig.from_flat({**load_toml(config), "seed": seed}, source=config)
    clients = prepare_clients(exp.data, exp.embedding, seed, progress=False).clients
    names = sorted(
        {c.user_type for c in clients},
        key=lambda t: next(c.type_index for c in clients if c.user_type == t),
    )
    headroom = client_headroom(clients, names, seed, trials=trials)
    by_k = {p["k"]: p["macro_accuracy"] for p in headroom["points"]}  # type: ignore[union-attr]
    sizes = headroom["context_sizes"]
    row = {f"ideal_{split}": by_k[k] for split, k in sizes.items()}  # type: ignore[union-attr]
    return {**row, **federation_ideal(clients, seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="conf/*.toml experiment files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=20000, help="headroom's simulated clients")
    args = parser.parse_args()
    for config in args.configs:
        if not Path(config).is_file():
            raise ConfigError("no such experiment file", path=config)
    torch.set_num_threads(1)
    print("| data | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for config in args.configs:
        rows = [measure(config, seed, args.trials) for seed in args.seeds]

        def cell(key: str, rows: list[dict[str, float]] = rows) -> str:
            values = [100 * r[key] for r in rows if key in r]
            if not values:
                return "–"
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.1f} ± {spread:.1f}"

        cells = " | ".join(cell(key) for key, _ in COLUMNS)
        print(f"| {Path(config).stem} | {cells} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        print(f"federation_ideal: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
