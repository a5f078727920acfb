"""FedAvg-BT with and without SecAgg+ on the same data: final accuracy and time per round.

The SecAgg+ run is Flower's legacy layout (``federation/secure_aggregation.py``: one
SuperNode per seen client, ``secaggplus_mod`` + ``SecAggPlusWorkflow``); the plain run is the
round protocol in process (the Flower runtime's numbers without its messaging). Both train the
same clients each round (the SecAgg+ server samples with the round protocol's sampler), so
without DP they end at the same accuracy; under DP they are two draws of the noise. Their times
compare as what SecAgg+'s four message stages cost.

    .venv/bin/python benchmarks/secagg.py --rounds 50
    .venv/bin/python benchmarks/secagg.py --rounds 50 --dp-epsilon 4   # both runs under DP
    .venv/bin/python benchmarks/secagg.py --rounds 50 --dp-epsilon 4 --dp-clip-norm 5

With ``--dp-epsilon`` both runs spend that epsilon over their rounds: the plain run clips on the
server (``privacy/guard.py``), the SecAgg+ run on the clients (their change of the weights,
before masking), each with the same noise multiplier from the same accountant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fedvpa.evaluation.accuracy import evaluate
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import create_method
from fedvpa.federation.secure_aggregation import run_secure_aggregation
from fedvpa.protocol.in_process import run_in_process
from fedvpa.runner import secure_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic-2")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--num-clients", type=int, default=100, help="seen and unseen")
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dp-epsilon", type=float, default=0.0, help="0 = no DP")
    parser.add_argument(
        "--dp-clip-norm", type=float, default=None, help="default: the dp-clip-norm key's"
    )
    args = parser.parse_args()
    if args.dp_epsilon < 0:
        parser.error("--dp-epsilon must be >= 0")
    if args.dp_clip_norm is not None and not args.dp_clip_norm > 0:
        parser.error("--dp-clip-norm must be > 0")

    flat = {
        "data": args.data, "num-server-rounds": args.rounds, "seed": args.seed,
        "num-clients": args.num_clients,
        "clients-per-round": args.clients_per_round, "eval-every": args.rounds,
        "dp-epsilon": args.dp_epsilon,
    }  # fmt: skip
    if args.dp_clip_norm is not None:
        flat["dp-clip-norm"] = args.dp_clip_norm
    exp = ExperimentConfig.from_flat(flat, source="benchmark")
    prepared = prepare_clients(exp.data, exp.embedding, args.seed, progress=False)
    clients = prepared.clients
    kwargs = exp.method_kwargs(clients[0].context.dim)
    method = create_method("fedavg-bt", kwargs)

    t0 = time.perf_counter()
    protocol, _, _ = run_in_process(method, clients, replace(exp.federation, method="fedavg-bt"))
    plain_s = time.perf_counter() - t0
    plain = evaluate(method.predictor(protocol.state.arrays), clients)

    settings = secure_settings(exp, "fedavg-bt", prepared.path, clients[0].context.dim)
    plain_privacy = None if protocol.privacy is None else protocol.privacy.report()
    with tempfile.TemporaryDirectory() as home:
        t0 = time.perf_counter()
        outcome = run_secure_aggregation(settings, flwr_home=Path(home))
        secure_s = time.perf_counter() - t0
    assert outcome.arrays is not None
    secure = evaluate(method.predictor(outcome.arrays), clients)
    hidden = all(r["distinct_updates_seen"] == 1 for r in outcome.rounds)
    result = {
        "data": args.data,
        "rounds": args.rounds,
        "num_clients": args.num_clients,
        "clients_per_round": args.clients_per_round,
        "seed": args.seed,
        "dp_epsilon": args.dp_epsilon,
        "plain_privacy": plain_privacy,
        "secagg_privacy": outcome.privacy,
        "plain": {"seen": plain["seen"]["macro"], "unseen": plain["unseen"]["macro"],
                  "seconds": plain_s},
        "secagg": {"seen": secure["seen"]["macro"], "unseen": secure["unseen"]["macro"],
                   "seconds": secure_s, "server_saw_only_aggregates": hidden},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(
        f"FedAvg-BT, {args.rounds} rounds of {args.clients_per_round}: plain "
        f"{100 * plain['seen']['macro']:.1f} / {100 * plain['unseen']['macro']:.1f} % seen / "
        f"unseen in {plain_s:.0f} s (in process); SecAgg+ {100 * secure['seen']['macro']:.1f} / "
        f"{100 * secure['unseen']['macro']:.1f} % in {secure_s:.0f} s on Flower "
        f"({secure_s / args.rounds:.2f} s a round); server saw only aggregates: {hidden}"
        + (
            f"; epsilon spent {plain_privacy['epsilon']:.2f} / {outcome.privacy['epsilon']:.2f} "
            f"(z {settings.dp_noise_multiplier:g})"
            if plain_privacy and outcome.privacy
            else ""
        )
    )


if __name__ == "__main__":
    main()
