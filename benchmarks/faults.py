"""Accuracy with 30% of each round's sampled clients failing (a third each: crash, time-out,
malformed NaN reply), against the fault-free run with the same seed, in process (the Flower
runtime's protocol and seeds; faults from ``protocol/faults.py``).

    .venv/bin/python benchmarks/faults.py --methods fedvpa-gp fedavg-bt --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from fedvpa.config import load_toml
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import create_method
from fedvpa.protocol.faults import FaultyTransport
from fedvpa.protocol.in_process import run_in_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a conf/*.toml (default: the defaults)")
    parser.add_argument("--methods", nargs="+", default=["fedvpa-gp", "fedavg-bt"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--json", default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flat = load_toml(args.config) if args.config else {}
    print("| method | seed | clean seen / unseen | faulty seen / unseen | failures | time |")
    print("|---|---|---|---|---|---|")
    for name in args.methods:
        for seed in args.seeds:
            exp = ExperimentConfig.from_flat({**flat, "seed": seed})
            clients = prepare_clients(exp.data, exp.embedding, seed, progress=False).clients
            settings = replace(exp.federation, method=name)
            out = {}
            for label, share in (("clean", 0.0), ("faulty", args.share)):
                method = create_method(name, exp.method_kwargs(clients[0].context.dim))
                transport = FaultyTransport(method, clients, share=share, seed=seed)
                t0 = time.perf_counter()
                _, _, rows = run_in_process(method, clients, settings, transport=transport)
                ev = rows[-1]["eval"]
                out[label] = {
                    "seen": 100 * ev["eval/seen/macro"],
                    "unseen": 100 * ev["eval/unseen/macro"],
                    "failures": sum(r["failures"] for r in rows),
                    "seconds": time.perf_counter() - t0,
                }
            c, f = out["clean"], out["faulty"]
            print(
                f"| {name} | {seed} | {c['seen']:.1f} / {c['unseen']:.1f} "
                f"| {f['seen']:.1f} / {f['unseen']:.1f} | {f['failures']} "
                f"| {c['seconds']:.0f}s / {f['seconds']:.0f}s |",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps({"method": name, "seed": seed, **out}) + "\n")


if __name__ == "__main__":
    main()
