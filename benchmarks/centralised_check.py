"""Centralised sanity check of the latent model before any federation.

Embeds the 2-type synthetic data (and, if given, the relabeled HH-RLHF dev file), partitions it
into clients, and prints per-type test accuracy (both A/B orders) of

- centralised VPL (every seen client's data pooled, N(0, I) prior, with / without L_orth, and
  with the VPL reward-form selector instead of the default logit-bias form),
- the per-type oracle (one Bradley-Terry model per true type),
- the monolithic Bradley-Terry model,

for seen and unseen clients, plus the accuracy on conflict pairs where the data knows them.

    .venv/bin/python benchmarks/centralised_check.py \
        --relabeled ../shared/data/relabeled-hh-rlhf/dev.jsonl.gz --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fedvpa.data.partition import partition_pairs
from fedvpa.data.readers import read_relabeled_hh
from fedvpa.data.synthetic import generate_synthetic
from fedvpa.embeddings.backbone import make_backbone
from fedvpa.embeddings.cache import EmbeddingCache
from fedvpa.embeddings.pipeline import embed_partition
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.evaluation import evaluate
from fedvpa.model.config import ModelConfig
from fedvpa.model.diagnostics import active_units, latent_silhouette
from fedvpa.training.centralised import (
    client_means,
    train_centralised_vpl,
    train_monolithic,
    train_oracle,
)


def load_clients(
    name: str, path: str | None, seed: int, cache: EmbeddingCache, backbone, args
) -> list[ClientTensors]:
    if name == "synthetic-2":
        pairs = generate_synthetic(2, pairs_per_type=1200, seed=seed)
    else:
        pairs = read_relabeled_hh(path, seed=seed)
    part = partition_pairs(
        pairs,
        num_clients=args.num_clients,
        pairs_per_client=args.pairs_per_client,
        split=tuple(args.split),
        seed=seed,
    )
    return embed_partition(part, backbone, cache, progress=False)


def run(clients: list[ClientTensors], seed: int, args) -> dict[str, dict]:
    cfg = ModelConfig(input_dim=clients[0].context.dim)
    out: dict[str, dict] = {}
    timings: dict[str, float] = {}
    runs = {
        "vpl": lambda: train_centralised_vpl(
            clients, dataclasses.replace(cfg, use_ortho=False), args.vpl_steps, args.lr, seed
        ),
        "vpl+orth": lambda: train_centralised_vpl(clients, cfg, args.vpl_steps, args.lr, seed),
        "vpl-reward": lambda: train_centralised_vpl(
            clients,
            dataclasses.replace(cfg, use_ortho=False, selector="reward"),
            args.vpl_steps,
            args.lr,
            seed,
        ),
        "oracle": lambda: train_oracle(clients, cfg, args.bt_steps, args.lr, seed),
        "monolithic": lambda: train_monolithic(clients, cfg, args.bt_steps, args.lr, seed),
    }
    for name, fn in runs.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        predictor = fn()
        timings[name] = time.perf_counter() - t0
        report = evaluate(predictor, clients)
        if name.startswith("vpl"):
            mu = torch.as_tensor(client_means(predictor.model, clients))
            report["active_units"] = active_units(mu)
            report["silhouette"] = latent_silhouette(mu, [c.type_index for c in clients])
        report["seconds"] = round(timings[name], 1)
        out[name] = report
    return out


def fmt(report: dict, group: str) -> str:
    acc = report.get(group)
    if acc is None:
        return "-"
    types = [k for k in acc if k not in ("macro", "n")]
    return " ".join(f"{t}={100 * acc[t]:.1f}" for t in types) + f" macro={100 * acc['macro']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relabeled", default=None, help="relabeled HH-RLHF dev.jsonl(.gz)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--vpl-steps", type=int, default=1500)
    parser.add_argument("--bt-steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--pairs-per-client", type=int, default=16)
    parser.add_argument(
        "--split", type=float, nargs=3, default=[0.5, 0.25, 0.25], help="context / train / test"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these (vpl vpl+orth vpl-reward ...)"
    )
    parser.add_argument(
        "--datasets", nargs="+", default=None, help="synthetic-2 and/or relabeled-hh"
    )
    parser.add_argument("--cache", default=os.environ.get("FEDVPA_CACHE", "/tmp/fedvpa-cache"))
    parser.add_argument("--json", default=None, help="write all reports to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = EmbeddingCache(Path(args.cache) / "embeddings")
    backbone = make_backbone("minilm", device="cpu")
    datasets = args.datasets or ["synthetic-2"] + (["relabeled-hh"] if args.relabeled else [])
    everything: dict[str, dict] = {}
    for data in datasets:
        for seed in args.seeds:
            t0 = time.perf_counter()
            clients = load_clients(data, args.relabeled, seed, cache, backbone, args)
            embed_s = time.perf_counter() - t0
            results = run(clients, seed, args)
            everything[f"{data}/seed{seed}"] = results
            print(f"== {data} seed {seed} (embedding {embed_s:.0f}s)", flush=True)
            for name, rep in results.items():
                conflict = rep.get("conflict", {}).get("all")
                extra = f" conflict={100 * conflict['macro']:.1f}" if conflict else ""
                if "active_units" in rep:
                    extra += f" AU={rep['active_units']} sil={rep['silhouette']:.2f}"
                print(
                    f"  {name:11s} seen[{fmt(rep, 'seen')}] unseen[{fmt(rep, 'unseen')}]"
                    f"{extra} ({rep['seconds']}s)",
                    flush=True,
                )
        if len(args.seeds) > 1:
            print(f"== {data}: mean (sd) over seeds {args.seeds}")
            for name in everything[f"{data}/seed{args.seeds[0]}"]:
                for group in ("seen", "unseen"):
                    vals = [everything[f"{data}/seed{s}"][name].get(group) for s in args.seeds]
                    if any(v is None for v in vals):
                        continue
                    line = []
                    for key in [k for k in vals[0] if k != "n"]:
                        xs = [100 * v[key] for v in vals]
                        line.append(f"{key}={statistics.mean(xs):.1f}({statistics.stdev(xs):.1f})")
                    print(f"  {name:11s} {group:6s} " + " ".join(line))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=float))


if __name__ == "__main__":
    main()
