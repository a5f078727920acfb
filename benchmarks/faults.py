"""Accuracy with 30% of each round's sampled clients failing (a third each: crash, time-out,
malformed NaN reply), against the fault-free run with the same seed, in process (the Flower
runtime's protocol and seeds; faults from ``protocol/faults.py``).

    .venv/bin/python benchmarks/faults.py --methods fedvpa-gp fedavg-bt --seeds 0 1 2

``--fault-draws K`` runs K faulty runs per seed, each with another draw of which clients fail
(fault seed ``seed + 1000 k``), and prints how far apart the faulty runs of one seed end: runs
that differ only in *which* 30 % fail show how much of a clean-versus-faulty difference is the
path a run takes rather than a cost of the faults. Each run is also summarised by the mean of its
last 10 evaluations (``--last``), which averages much of that path out.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument(
        "--fault-draws", type=int, default=1, help="faulty runs per seed, each failing others"
    )
    parser.add_argument(
        "--last", type=int, default=10, help="evaluations averaged for the last-k columns"
    )
    parser.add_argument("--json", default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    if args.fault_draws < 1:
        parser.error("--fault-draws must be at least 1")
    if args.last < 1:
        parser.error("--last must be at least 1")
    torch.set_num_threads(1)
    flat = load_toml(args.config) if args.config else {}
    print(
        f"| method | seed | clean seen / unseen | faulty seen / unseen | clean, last {args.last} "
        f"| faulty, last {args.last} | failures | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.methods:
        for seed in args.seeds:
            exp = ExperimentConfig.from_flat({**flat, "seed": seed})
            clients = prepare_clients(exp.data, exp.embedding, seed, progress=False).clients
            settings = replace(exp.federation, method=name)
            out = {}
            runs = [("clean", 0.0, seed)] + [
                (f"faulty{k}" if k else "faulty", args.share, seed + 1000 * k)
                for k in range(args.fault_draws)
            ]
            for label, share, fault_seed in runs:
                method = create_method(name, exp.method_kwargs(clients[0].context.dim))
                transport = FaultyTransport(method, clients, share=share, seed=fault_seed)
                t0 = time.perf_counter()
                _, _, rows = run_in_process(method, clients, settings, transport=transport)
                ev = rows[-1]["eval"]
                recent = [r["eval"] for r in rows if r.get("eval")][-args.last :]
                out[label] = {
                    "seen": 100 * ev["eval/seen/macro"],
                    "unseen": 100 * ev["eval/unseen/macro"],
                    "seen_last": 100 * statistics.mean(e["eval/seen/macro"] for e in recent),
                    "unseen_last": 100 * statistics.mean(e["eval/unseen/macro"] for e in recent),
                    "failures": sum(r["failures"] for r in rows),
                    "seconds": time.perf_counter() - t0,
                    "fault_seed": fault_seed,
                }
            c = out["clean"]
            for label, f in out.items():
                if label == "clean":
                    continue
                print(
                    f"| {name} | {seed}{'' if label == 'faulty' else ' (' + label + ')'} "
                    f"| {c['seen']:.1f} / {c['unseen']:.1f} "
                    f"| {f['seen']:.1f} / {f['unseen']:.1f} "
                    f"| {c['seen_last']:.1f} / {c['unseen_last']:.1f} "
                    f"| {f['seen_last']:.1f} / {f['unseen_last']:.1f} | {f['failures']} "
                    f"| {c['seconds']:.0f}s / {f['seconds']:.0f}s |",
                    flush=True,
                )
            faulty = [f for label, f in out.items() if label != "clean"]
            if len(faulty) > 1:
                spread = {
                    key: max(f[key] for f in faulty) - min(f[key] for f in faulty)
                    for key in ("seen", "unseen", "seen_last", "unseen_last")
                }
                print(
                    f"|   | {seed}: faulty runs apart by | | {spread['seen']:.1f} / "
                    f"{spread['unseen']:.1f} | | {spread['seen_last']:.1f} / "
                    f"{spread['unseen_last']:.1f} | | |",
                    flush=True,
                )
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps({"method": name, "seed": seed, **out}) + "\n")


if __name__ == "__main__":
    main()
