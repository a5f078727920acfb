"""What one client's round of local training costs, per method, and how two versions compare.

Times ``client_train`` (the client's whole round: model from the global weights, prior from the
payload, ``local-steps`` steps, the reported statistics) on one synthetic client with the
defaults, one thread, median over repeats:

- ``fedavg-bt``: the monolithic Bradley-Terry head;
- ``fedvpl``: the latent model under ``N(0, I)``;
- ``fedvpa-gp``: the latent model at a round where every term is on (mixture prior of
  ``--components`` posteriors, prototype pull with a server-assigned label).

``--batch C`` times C clients of one message instead (``protocol.client.train_steps``, what a
simulated node runs) and reports the time per client; the ``+batched`` variants of the latent
methods (``--methods fedvpa-gp+batched``) set ``batched-clients``, so the C clients train in one
vectorised pass (``training/batched.py``). ``fedvpl+read`` is FedVPL with ``read-weight = 1``.

Speeds on a shared machine are only comparable inside one invocation, so ``--src`` runs the
measurement once per source tree (``PYTHONPATH`` set to it), alternating the trees ``--rounds``
times, and prints each tree's median with its ratio to the first. To compare with an earlier
commit::

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/local_step.py --src /tmp/before/src --src src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))
from mixture_prior import INPUT_DIM, ROUND, make_client, make_store, median_seconds  # noqa: E402

METHODS = ("fedavg-bt", "fedvpl", "fedvpa-gp", "fedvpl+batched", "fedvpa-gp+batched", "fedvpl+read")
BATCHED = "+batched"
READ = "+read"  # FedVPL with read-weight = 1: the cost of the read term (README)


def measure(method_name: str, args: argparse.Namespace) -> float:
    """Median seconds of one client's round of local training under ``method_name`` (per client
    of a ``--batch`` of them)."""
    from fedvpa.federation.registry import create_method
    from fedvpa.methods.base import ServerState

    local = {"batched_clients": True} if method_name.endswith(BATCHED) else {}
    model: dict[str, Any] = {"input_dim": INPUT_DIM}
    if method_name.endswith(READ):
        model["read_weight"] = 1.0
    method_name = method_name.removesuffix(BATCHED).removesuffix(READ)
    client = make_client(args.pairs, 0)
    method = create_method(method_name, {"model": model, "local": local})
    state = method.init_server_state(0)
    server_round = 1
    if method_name == "fedvpa-gp":
        latent_dim = int(method.cfg.latent_dim)  # type: ignore[attr-defined]
        store = make_store(args.components, latent_dim, 0)
        state = ServerState(state.arrays, {**state.extra, **store}, {})
        server_round = ROUND
    payload = dict(method.client_payload(state, client.client_id, server_round))
    if method_name == "fedvpa-gp":
        payload["proto_label"] = np.array([0], np.int64)
    if args.batch > 1:
        from fedvpa.methods.base import TrainRequest
        from fedvpa.protocol.client import train_steps

        requests = []
        for i in range(args.batch):
            own = dict(payload)
            if "proto_label" in own:
                own["proto_label"] = np.array([i % 3], np.int64)
            requests.append(TrainRequest(make_client(args.pairs, i), own, {}, i))
        return median_seconds(
            lambda: train_steps(method, state.arrays, requests, server_round), args.repeats
        ) / len(requests)
    return median_seconds(
        lambda: method.client_train(state.arrays, payload, client, {}, server_round, 0),
        args.repeats,
    )


def run_here(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(1)
    threadpool_limits(1)
    return {name: measure(name, args) for name in args.methods}


def run_tree(src: str, args: argparse.Namespace) -> dict[str, float]:
    """One measurement in a child interpreter that imports fedvpa from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
    cmd += ["--pairs", str(args.pairs), "--components", str(args.components)]
    cmd += ["--batch", str(args.batch)]
    cmd += ["--methods", *args.methods]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"local_step: the measurement under {src} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS[:3]), choices=METHODS)
    parser.add_argument("--pairs", type=int, default=8, help="labelled pairs of the client")
    parser.add_argument("--components", type=int, default=100, help="mixture prior size J")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--batch", type=int, default=1, help="clients of one message (time per client)"
    )
    parser.add_argument("--src", action="append", default=[], help="a source tree to time")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the --src trees")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(args)))
        return
    trees = args.src or [str(Path(__file__).parents[1] / "src")]
    # Per position, not per path: the same tree given twice is a test of the noise.
    samples: list[dict[str, list[float]]] = [{m: [] for m in args.methods} for _ in trees]
    for r in range(args.rounds):
        for i, tree in enumerate(trees):
            for name, seconds in run_tree(tree, args).items():
                samples[i][name].append(seconds)
            print(f"[local_step] round {r + 1}/{args.rounds}: {tree} done", file=sys.stderr)
    medians = [{m: statistics.median(v) for m, v in s.items()} for s in samples]
    first = medians[0]
    header = " | ".join(f"{m} ms" for m in args.methods)
    print(f"| source | {header} | fedvpa-gp / fedavg-bt |")
    print("|---|" + "---|" * (len(args.methods) + 1))
    for i, (tree, row) in enumerate(zip(trees, medians, strict=True)):
        cells = [
            f"{1e3 * row[m]:.1f}" + ("" if i == 0 else f" ({first[m] / row[m]:.2f}x)")
            for m in args.methods
        ]
        ratio = (
            f"{row['fedvpa-gp'] / row['fedavg-bt']:.1f}"
            if {"fedvpa-gp", "fedavg-bt"} <= set(row)
            else "–"
        )
        print(f"| {tree} | " + " | ".join(cells) + f" | {ratio} |")
    if args.json:
        meta: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("json", "child")}
        Path(args.json).write_text(
            json.dumps(
                {"settings": meta, "trees": trees, "samples": samples, "medians": medians},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
