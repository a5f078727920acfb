"""What a round costs at scale, on Flower's simulation engine (issue 14).

Runs each method on the embedded synthetic data with ``--clients`` clients of ``--pairs`` pairs,
``--per-round`` of them sampled per round, through the real runtime (``run_federated``: Ray,
one virtual SuperNode per client), and next to it, in the same invocation, the same federation
with **no-op clients** (they return the weights they received without a step: FedAvg-BT's
messages, no compute), which is the floor the Flower and Ray machinery alone costs. Prints, per
run: wall time, time per round (median of the rounds after the first, which also starts Ray
and the ClientApps), time per client update, peak memory (RSS summed over this process and every
descendant, Ray's included, sampled every 0.2 s, which is also the resolution of the round
times) and bytes per client per round. Only the last round evaluates (``eval-every`` =
rounds), so the figures are training rounds. A folder that already holds runs, an unknown
method or a bad number is refused in one line (exit 2) before any work.

    .venv/bin/python benchmarks/scale.py --clients 1000 --pairs 8 --per-round 100 --rounds 100
    .venv/bin/python benchmarks/scale.py --rounds 10 --json scale.jsonl   # a shorter measurement
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import FedvpaInputError
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import method_reference
from fedvpa.federation.run_config import FederationConfig
from fedvpa.federation.runtime import run_federated
from fedvpa.methods.base import Arrays, ClientUpdate
from fedvpa.methods.reward_heads import FedAvgBT
from fedvpa.protocol.round import FederationError

BENCHMARKS = Path(__file__).resolve().parent
NOOP = "scale:NoOpClients"  # importable by the Ray workers through PYTHONPATH (set in main)


class NoOpClients(FedAvgBT):
    """FedAvg-BT's messages without its local steps: a client sends back what it received."""

    name = "no-op"

    def client_train(
        self,
        global_arrays: Arrays,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
        seed: int,
    ) -> tuple[ClientUpdate, Arrays]:
        return ClientUpdate(dict(global_arrays), client.num_examples), client_state


class Monitor:
    """Samples the process tree's RSS and the time each round's row reaches metrics.jsonl."""

    def __init__(self, metrics: Path, interval: float = 0.2) -> None:
        self.metrics = metrics
        self.interval = interval
        self.peak_rss = 0
        self.row_times: list[float] = []
        self._read = 0  # bytes of metrics.jsonl already counted: only new rows are read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._rss())
        if not self.metrics.exists():
            return
        with self.metrics.open("rb") as fh:
            fh.seek(self._read)
            new = fh.read()
        complete = new.rfind(b"\n") + 1  # a row being written counts once it is whole
        self._read += complete
        now = time.perf_counter()
        self.row_times.extend([now] * new[:complete].count(b"\n"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def run_one(
    exp: ExperimentConfig, method: str, data_path: Path, dim: int, n: int, out: Path
) -> dict[str, Any]:
    run_dir = out / method.replace(":", "-")
    config = FederationConfig.from_experiment(
        exp, method=method, input_dim=dim, data_path=data_path, run_dir=run_dir, num_clients=n
    )
    with Monitor(run_dir / "metrics.jsonl") as mon:
        t0 = time.perf_counter()
        final = run_federated(config, flwr_home=out / ".flwr")
        wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gaps = [b - a for a, b in zip(mon.row_times, mon.row_times[1:], strict=False)]
    # the last row also waits for the evaluation: leave it out of the training round time
    train_gaps = gaps[:-1] or gaps
    per_round = statistics.median(train_gaps) if train_gaps else float("nan")
    # FedVPA-GP's locate exchange and mixture prior start after their warm-up rounds: the
    # second half of a long enough run shows the full cost
    late = train_gaps[len(train_gaps) // 2 :]
    late_round = statistics.median(late) if late else float("nan")
    clients = statistics.mean(r["replies"] for r in rows)
    bytes_client = statistics.mean(
        (r["bytes_down"] + r["bytes_up"]) / max(r["replies"], 1) for r in rows
    )
    return {
        "method": "no-op floor" if method == NOOP else method,
        "clients": n,
        "per_round": exp.federation.clients_per_round,
        "rounds": len(rows),
        "wall_s": wall,
        "first_round_s": mon.row_times[0] - mon.start if mon.row_times else None,
        "round_s": per_round,
        "late_round_s": late_round,
        "round_times_s": [round(g, 3) for g in gaps],
        "client_update_s": per_round / clients,
        "peak_rss_gb": mon.peak_rss / 2**30,
        "bytes_per_client_round": bytes_client,
        "seen_accuracy": final["eval"].get("eval/seen/macro"),
    }


def main() -> None:
    try:
        measure()
    except FedvpaInputError as exc:  # bad input: one line, exit 2, as the fedvpa CLI does
        print(f"scale.py: error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    except FederationError as exc:
        print(f"scale.py: the run failed: {exc}", file=sys.stderr)
        sys.exit(1)


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per client")
    parser.add_argument("--per-round", type=int, default=100, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["fedvpa-gp", "fedavg-bt"])
    parser.add_argument("--no-floor", action="store_true", help="skip the no-op floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    for name in ("clients", "pairs", "per_round", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for method in args.methods:
        method_reference(method)  # an unknown method fails here, not after the data and floor
    if args.out and any(Path(args.out).glob("*/metrics.jsonl")):
        parser.error(f"--out {args.out} already holds runs: choose an empty folder")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(BENCHMARKS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    sys.path.insert(0, str(BENCHMARKS))
    exp = ExperimentConfig.from_flat(
        {
            "data": "synthetic-2",
            "num-clients": args.clients,
            "pairs-per-client": args.pairs,
            "clients-per-round": args.per_round,
            "num-server-rounds": args.rounds,
            "eval-every": args.rounds,
            "seed": args.seed,
        },
        source="scale.py",
    )
    t0 = time.perf_counter()
    prepared = prepare_clients(exp.data, exp.embedding, args.seed, progress=True)
    print(f"data: {len(prepared.clients)} clients in {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="fedvpa-scale-"))
    runs = ([] if args.no_floor else [NOOP]) + list(args.methods)
    header = (
        "| run | clients (per round) | rounds | wall | first round | per round | per client "
        "update | second half, per round | peak RSS | bytes per client per round | seen acc |"
    )
    results = []
    for method in runs:
        res = run_one(
            exp, method, prepared.path, prepared.clients[0].context.dim, len(prepared.clients), out
        )
        results.append(res)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({**res, "args": vars(args)}) + "\n")
        print(f"{res['method']}: {res['wall_s']:.0f} s, {res['round_s']:.2f} s a round", flush=True)
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    floor = next((r for r in results if r["method"] == "no-op floor"), None)
    for r in results:
        ratio = f" ({r['round_s'] / floor['round_s']:.1f}x floor)" if floor else ""
        late = f" ({r['late_round_s'] / floor['late_round_s']:.1f}x)" if floor else ""
        acc = "–" if r["seen_accuracy"] is None else f"{100 * r['seen_accuracy']:.1f}"
        print(
            f"| {r['method']} | {r['clients']} ({r['per_round']}) | {r['rounds']} "
            f"| {r['wall_s']:.0f} s | {r['first_round_s']:.1f} s | {r['round_s']:.2f} s{ratio} "
            f"| {1000 * r['client_update_s']:.0f} ms | {r['late_round_s']:.2f} s{late} "
            f"| {r['peak_rss_gb']:.2f} GB "
            f"| {r['bytes_per_client_round'] / 1024:.0f} KiB | {acc} |"
        )
    print(f"run folders: {out}")


if __name__ == "__main__":
    main()
