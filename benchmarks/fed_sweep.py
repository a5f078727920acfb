"""Federated-optimisation candidates, measured in process (same maths as the Flower runtime).

Runs a method's rounds without Flower (sample -> locate -> plan -> train -> aggregate), evaluates
every ``--eval-every`` rounds and prints, per (data, setting, seed): final seen / unseen macro
accuracy, conflict accuracy, and the mean and standard deviation of seen accuracy over the last
10 evaluations. It exists to compare settings quickly on the 2-core machine; reported numbers
come from real ``fedvpa compare`` runs on Flower.

    .venv/bin/python benchmarks/fed_sweep.py --config conf/plural-4.toml --method fedvpl \
        --seeds 0 1 --variant base: --variant adam:server-opt=adam,server-lr=0.01
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedvpa.config import load_toml
from fedvpa.evaluation.accuracy import evaluate
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import create_method


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    return name, overrides


def run_one(flat: dict[str, Any], method_name: str, seed: int, eval_every: int) -> dict[str, Any]:
    exp = ExperimentConfig.from_flat(flat, source="sweep")
    prepared = prepare_clients(exp.data, exp.embedding, seed, progress=False)
    clients = prepared.clients
    method = create_method(method_name, exp.method_kwargs(clients[0].context.dim))
    rounds = exp.federation.num_server_rounds
    per_round = exp.federation.clients_per_round
    state = method.init_server_state(seed)
    private: dict[int, Any] = {}
    by_id = {c.client_id: c for c in clients}
    seen = sorted(c.client_id for c in clients if not c.unseen)
    history = []
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        chosen = sorted(random.Random(seed * 100_003 + r).sample(seen, min(per_round, len(seen))))
        located = None
        if method.needs_locate(r):
            located = {cid: method.locate(state.arrays, by_id[cid]) for cid in chosen}
        state = method.plan_round(state, chosen, r, located)
        updates = []
        for cid in chosen:
            payload = method.client_payload(state, cid, r)
            update, private[cid] = method.client_train(
                state.arrays,
                payload,
                by_id[cid],
                private.get(cid, {}),
                r,
                seed * 1000 + r * 100 + cid,
            )
            updates.append((cid, update))
        state = method.aggregate(state, updates, r)
        if r % eval_every == 0 or r == rounds:
            report = evaluate(method.predictor(state.arrays), clients)
            conflict = report.get("conflict", {}).get("seen", {})
            history.append(
                {
                    "round": r,
                    "seen": 100 * report["seen"]["macro"],
                    "unseen": 100 * report["unseen"]["macro"] if report.get("unseen") else None,
                    "conflict": 100 * conflict["macro"] if conflict else None,
                    "groups": method.round_info(state).get("num_groups"),
                }
            )
    last = history[-10:]
    seen_last = [h["seen"] for h in last]
    return {
        "final": history[-1],
        "last10_mean": statistics.mean(seen_last),
        "last10_std": statistics.pstdev(seen_last) if len(seen_last) > 1 else 0.0,
        "history": history,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a conf/*.toml experiment file")
    parser.add_argument("--method", default="fedvpl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", default=None, help="name:key=value,...")
    parser.add_argument("--set", action="append", default=[], help="key=value for every variant")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--json", default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_toml(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        base[key] = parse_value(value)
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    for name, overrides in variants:
        for seed in args.seeds:
            flat = {**base, **overrides}
            out = run_one(flat, args.method, seed, args.eval_every)
            f = out["final"]
            curve = " ".join(f"{h['seen']:.0f}" for h in out["history"])
            print(
                f"{Path(args.config).stem:12s} {args.method:10s} {name:14s} s{seed} "
                f"seen {f['seen']:.1f} unseen {f['unseen'] or float('nan'):.1f} "
                f"conf {f['conflict'] or float('nan'):.1f} last10 {out['last10_mean']:.1f}"
                f"±{out['last10_std']:.1f} groups {f['groups']} ({out['seconds']:.0f}s) | {curve}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as fh:
                    row = {"config": args.config, "method": args.method, "variant": name}
                    fh.write(
                        json.dumps({**row, "overrides": overrides, "seed": seed, **out}) + "\n"
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
