"""Is the ideal personalised accuracy out of reach because of the data, or because of the model?

For each experiment file and seed, prints next to each other:
- the ideal of ``fedvpa headroom`` on the partition (probes fitted out of fold on every pair of
  every client, scored on simulated clients at the seen / unseen clients' k);
- the same Bayes-optimal predictor restricted to what the federation holds
  (``headroom.federation_ideal``: probes fitted on the seen clients' labelled pairs only, each
  real client scored on its own test pairs with its type read from its own pairs), with the
  type inferred and with the type given.
If the two ideals agree, a federated method below them is short of type inference, not of data.
With ``--em-steps N`` also soft EM over the per-type probes started at the true types
(``headroom.em_from_types``): the matched ideal after one step and after N steps of fitting the
types from the clients' own likelihood instead of their labels, with the share of seen clients
still read as their own type and the smallest component's weight. What it asks: is the ideal a
fixed point that a method which must discover the types could reach?

    .venv/bin/python benchmarks/federation_ideal.py conf/plural-4.toml conf/synthetic-4.toml \
        --seeds 0 1 2 --em-steps 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fedvpa.config import load_toml
from fedvpa.errors import ConfigError
from fedvpa.evaluation.headroom import client_headroom, em_from_types, federation_ideal
from fedvpa.experiment import ExperimentConfig, prepare_clients

COLUMNS = (
    ("ideal_seen", "headroom ideal, seen"),
    ("seen", "matched, seen"),
    ("seen_known_type", "matched, type given, seen"),
    ("ideal_unseen", "headroom ideal, unseen"),
    ("unseen", "matched, unseen"),
    ("unseen_known_type", "matched, type given, unseen"),
)
EM_COLUMNS = (
    ("em1_seen", "EM from the types, 1 step, seen"),
    ("em1_unseen", "1 step, unseen"),
    ("em_seen", "N steps, seen"),
    ("em_unseen", "N steps, unseen"),
    ("em_agreement", "N steps, clients read as their type"),
    ("em_smallest_share", "N steps, smallest component"),
)


def measure(config: str, seed: int, trials: int, em_steps: int = 0) -> dict[str, float]:
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
    row = {**row, **federation_ideal(clients, seed)}
    if em_steps > 0:
        history = em_from_types(clients, em_steps, seed)
        row |= {"em1_seen": history[1]["seen"], "em1_unseen": history[1]["unseen"]}
        row |= {f"em_{key}": history[-1][key] for key in ("seen", "unseen", "agreement")}
        row["em_smallest_share"] = history[-1]["smallest_share"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="conf/*.toml experiment files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=20000, help="headroom's simulated clients")
    parser.add_argument(
        "--em-steps", type=int, default=0, help="soft EM steps from the true types (0 = none)"
    )
    args = parser.parse_args()
    if args.em_steps < 0:
        raise ConfigError(f"must be >= 0, got {args.em_steps}", field="em-steps")
    for config in args.configs:
        if not Path(config).is_file():
            raise ConfigError("no such experiment file", path=config)
    torch.set_num_threads(1)
    columns = COLUMNS + (EM_COLUMNS if args.em_steps else ())
    print("| data | " + " | ".join(label for _, label in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for config in args.configs:
        rows = [measure(config, seed, args.trials, args.em_steps) for seed in args.seeds]

        def cell(key: str, rows: list[dict[str, float]] = rows) -> str:
            values = [100 * r[key] for r in rows if key in r]
            if not values:
                return "–"
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.1f} ± {spread:.1f}"

        cells = " | ".join(cell(key) for key, _ in columns)
        print(f"| {Path(config).stem} | {cells} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        print(f"federation_ideal: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
