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

``--clients-per-node 1 100`` measures every run once per value in the same invocation (the
default, 0, is what a simulation does by itself: 100 at 1,000 clients on a 2-core machine); with
k > 1 each virtual SuperNode holds k clients and gets one message per phase for all of them
(the ``clients-per-node`` key). ``--variant NAME:KEY=VALUE,...`` also runs each latent method
with those keys (labelled ``method+NAME``) in the same invocation, e.g. the settings meant for
thousands of clients (``--variant scale:batched-clients=true,prior-max-components=16``);
``--batched`` is ``--variant batched:batched-clients=true``. ``--deployment N`` runs on
Flower's deployment engine instead: a SuperLink and N SuperNodes on localhost
(``--insecure``), each holding ``clients / N`` clients, the run submitted with ``flwr run``;
every process is stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from fed_sweep import parse_variant

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import FedvpaInputError
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import method_reference
from fedvpa.federation.run_config import FederationConfig, resolve_clients_per_node
from fedvpa.federation.runtime import run_federated
from fedvpa.methods.base import Arrays, ClientUpdate
from fedvpa.methods.reward_heads import FedAvgBT
from fedvpa.protocol.round import FederationError

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
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


def _run_config_value(value: Any) -> Any:
    """Flower's run config holds scalars only: a list key goes as its comma-separated text."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def run_deployed(
    flat: dict[str, Any], run_dir: Path, nodes: int, home: Path, timeout: float
) -> dict[str, Any]:
    """One run on a localhost deployment: SuperLink, ``nodes`` SuperNodes, ``flwr run``."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_deployment import descendants, free_port, kill_pid, stop, wait_port

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    run_config = home / "run.toml"
    run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in flat.items()))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        # N SuperNodes share this machine's cores: one thread per ClientApp process, as Ray
        # gives each simulation actor
        "OMP_NUM_THREADS": "1",
    }
    procs: list[subprocess.Popen[bytes]] = []
    logs = home / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    final_path = run_dir / "final.json"
    try:
        link = start(
            "superlink",
            [str(bin_dir / "flower-superlink"), "--insecure",
             "--disable-runtime-dependency-installation", "--port", str(port)],
        )  # fmt: skip
        wait_port(port, link)
        for i in range(nodes):
            start(
                f"supernode{i}",
                [str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                 f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config",
                 f'partition-id={i} num-partitions={nodes} data-path="{flat["data-path"]}"'],
            )  # fmt: skip
        done = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(REPO), "bench", "--run-config", str(run_config)],
            cwd=REPO, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise FederationError(f"flwr run failed: {done.stderr.decode()[-500:]}")
        deadline = time.monotonic() + timeout
        while not final_path.exists():
            if time.monotonic() > deadline or link.poll() is not None:
                tail = (logs / "superlink.log").read_text()[-1500:]
                raise FederationError(f"no results after {timeout:.0f} s; SuperLink log: {tail}")
            time.sleep(0.5)
    finally:
        spawned = [child for proc in procs for child in descendants(proc.pid)]
        for proc in reversed(procs):
            stop(proc)
        for pid in spawned:
            kill_pid(pid)
    return dict(json.loads(final_path.read_text()))


Variant = tuple[str, dict[str, Any]]  # a name and the keys it sets
BATCHED_VARIANT: Variant = ("batched", {"batched-clients": True})
LATENT = ("fedvpl", "fedvpl+gp", "fedvpl+ortho", "fedvpa-gp")


def run_one(
    exp: ExperimentConfig,
    method: str,
    data_path: Path,
    dim: int,
    n: int,
    out: Path,
    per_node: int = 1,
    deployment: int = 0,
    variant: Variant | None = None,
) -> dict[str, Any]:
    """One run; ``variant`` (name, keys) runs the method with those keys set, labelled
    ``method+name`` (``--batched`` is the variant ``batched: batched-clients = true``)."""
    label = method + (f"+{variant[0]}" if variant else "")
    name = label.replace(":", "-") + (f"-k{per_node}" if per_node > 1 else "")
    run_dir = out / (name + (f"-deployed{deployment}" if deployment else ""))
    if variant is not None:
        exp = ExperimentConfig.from_flat(
            {**exp.to_flat(), **variant[1]}, source=f"scale.py variant {variant[0]}"
        )
    fed = replace(exp.federation, clients_per_node=per_node)
    exp = replace(exp, federation=fed)
    config = FederationConfig.from_experiment(
        exp, method=method, input_dim=dim, data_path=data_path, run_dir=run_dir, num_clients=n
    )
    with Monitor(run_dir / "metrics.jsonl") as mon:
        t0 = time.perf_counter()
        if deployment:
            flat = {
                **{k: _run_config_value(v) for k, v in exp.to_flat().items() if v is not None},
                "method": method,
                "data-path": str(data_path),
                "run-dir": str(run_dir),
                "clients-per-node": per_node,
            }
            final = run_deployed(flat, run_dir, deployment, out / f".deploy-{name}", 3600.0)
        else:
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
        "method": "no-op floor" if method == NOOP else label,
        "runtime": f"deployment, {deployment} SuperNodes" if deployment else "simulation",
        "clients_per_node": per_node,
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


def plan_runs(
    methods: list[str], floor: bool, variants: list[Variant], variants_only: bool = False
) -> list[tuple[str, Variant | None]]:
    """The runs of one invocation in order: the floor, then each method, each latent method's
    variants right after its own run (a variant of FedAvg-BT's keys would measure nothing new);
    ``variants_only``: a latent method with variants runs only as those."""
    plain = ([NOOP] if floor else []) + list(methods)
    runs: list[tuple[str, Variant | None]] = []
    for m in plain:
        own = [(m, v) for v in variants if m in LATENT]
        runs += own if (own and variants_only) else [(m, None), *own]
    return runs


def main() -> None:
    # SIGTERM (kill, a CI timeout) ends like Ctrl-C, so run_deployed's cleanup stops the
    # SuperLink and SuperNodes it started instead of leaving them running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
    parser.add_argument(
        "--clients-per-node",
        type=int,
        nargs="+",
        default=[0],
        help="each value is measured; 0 = the simulation's automatic default",
    )
    parser.add_argument(
        "--deployment", type=int, default=0, help="N > 0: a localhost deployment, N SuperNodes"
    )
    parser.add_argument(
        "--batched",
        action="store_true",
        help="also run each latent method with batched-clients = true (its name + '+batched')",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="also run each latent method with these keys (its name + '+NAME'), e.g. "
        "'scale:batched-clients=true,prior-max-components=16'",
    )
    parser.add_argument(
        "--variants-only",
        action="store_true",
        help="run the latent methods only as their variants (not with the defaults too)",
    )
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    for vname, keys in variants:
        if not vname or not keys:
            parser.error(f"--variant {vname!r}: give NAME:KEY=VALUE[,KEY=VALUE]")
        try:  # a bad key or value fails here, in one line, not after the floor
            ExperimentConfig.from_flat(keys, source=f"--variant {vname}")
        except FedvpaInputError as exc:
            parser.error(exc.one_line())
    if args.batched:
        variants.insert(0, BATCHED_VARIANT)
    for name in ("clients", "pairs", "per_round", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(k < 0 for k in args.clients_per_node) or args.deployment < 0:
        parser.error("--clients-per-node must be at least 0 (auto) and --deployment at least 0")
    if args.deployment:  # N nodes share the clients
        args.clients_per_node = [-(-args.clients // args.deployment)]
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
    runs = plan_runs(args.methods, not args.no_floor, variants, args.variants_only)
    header = (
        "| run | runtime | clients per node | clients (per round) | rounds | wall | first round "
        "| per round | per client update | second half, per round | peak RSS "
        "| bytes per client per round | seen acc |"
    )
    results = []
    dim, n = prepared.clients[0].context.dim, len(prepared.clients)
    for requested in args.clients_per_node:
        per_node = resolve_clients_per_node(requested, n, simulated=True)
        for method, variant in runs:
            res = run_one(
                exp, method, prepared.path, dim, n, out, per_node, args.deployment, variant
            )
            results.append(res)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps({**res, "args": vars(args)}) + "\n")
            print(
                f"{res['method']} ({res['runtime']}, {per_node} clients per node): "
                f"{res['wall_s']:.0f} s, {res['round_s']:.2f} s a round",
                flush=True,
            )
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        floor = next(
            (
                f
                for f in results
                if f["method"] == "no-op floor" and f["clients_per_node"] == r["clients_per_node"]
            ),
            None,
        )
        ratio = f" ({r['round_s'] / floor['round_s']:.1f}x floor)" if floor else ""
        late = f" ({r['late_round_s'] / floor['late_round_s']:.1f}x)" if floor else ""
        acc = "–" if r["seen_accuracy"] is None else f"{100 * r['seen_accuracy']:.1f}"
        print(
            f"| {r['method']} | {r['runtime']} | {r['clients_per_node']} "
            f"| {r['clients']} ({r['per_round']}) | {r['rounds']} "
            f"| {r['wall_s']:.0f} s | {r['first_round_s']:.1f} s | {r['round_s']:.2f} s{ratio} "
            f"| {1000 * r['client_update_s']:.0f} ms | {r['late_round_s']:.2f} s{late} "
            f"| {r['peak_rss_gb']:.2f} GB "
            f"| {r['bytes_per_client_round'] / 1024:.0f} KiB | {acc} |"
        )
    print(f"run folders: {out}")


if __name__ == "__main__":
    main()
