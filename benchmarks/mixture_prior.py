"""Cost of the Federated Mixture Prior at J components, with and without server-side compression.

The mixture prior holds one component per client seen within ``prior-max-age`` rounds, every
sampled client receives all of them and evaluates the whole mixture in its KL term each local
step. For each J (and each ``prior-max-components`` K, 0 = uncompressed) this measures, on one
client of 16 labelled pairs with the FedVPA-GP defaults (MiniLM-sized inputs, latent-dim 8):

- ``step ms``: one local step (sample context/query views, ``local_objective`` with the prior,
  backward, Adam step: the body of ``training.local.train_local``), median over repeats;
- ``client ms``: the client's whole round through ``VariationalMethod.client_train`` (prior
  built from the payload, the local steps, the moment-matched posterior), median over repeats;
- ``server merge ms``: the server's merge of the store (``compress_prior_rows``: once per round,
  the clients of a round share it), median;
- ``prior bytes``: the prior arrays in one client's payload (per client per round).

    .venv/bin/python benchmarks/mixture_prior.py --components 100 1000 10000 --max-components 0 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.federation.registry import create_method
from fedvpa.methods.base import Arrays, ServerState
from fedvpa.methods.posterior_store import PRIOR_KEYS, compress_prior_rows
from fedvpa.methods.variational import VariationalMethod
from fedvpa.model.priors import Prior
from fedvpa.training.local import make_optimiser, split_context_query

INPUT_DIM = 384  # the bundled MiniLM encoder
ROUND = 31  # after the prior warm-up and the prototype ramp: every loss term is on


def make_client(pairs: int, seed: int) -> ClientTensors:
    """A client with ``pairs`` labelled pairs (half context, half train) and 4 test pairs."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> PairTensors:
        a = torch.randn(n, INPUT_DIM, generator=gen)
        b = torch.randn(n, INPUT_DIM, generator=gen)
        return PairTensors(a, b, (torch.rand(n, generator=gen) > 0.5).float())

    half = pairs // 2
    return ClientTensors(0, "helpful", 0, False, split(half), split(pairs - half), split(4))


def make_store(num: int, latent_dim: int, seed: int) -> Arrays:
    """J client posteriors around four user-type centres (what a trained store looks like)."""
    rng = np.random.default_rng(seed)
    centres = 5.0 * np.eye(4, latent_dim)
    mu = centres[np.arange(num) % 4] + rng.normal(size=(num, latent_dim))
    return {
        "prior_mu": mu.astype(np.float32),
        "prior_var": rng.uniform(0.05, 0.5, size=(num, latent_dim)).astype(np.float32),
        "prior_n": np.full(num, 12.0, np.float32),
        "prior_ids": np.arange(1, num + 1, dtype=np.int64),
        "prior_round": np.full(num, ROUND - 1, np.int64),
    }


def median_seconds(fn: Callable[[], Any], repeats: int, per_call: int = 1) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / per_call)
    return statistics.median(times)


def local_steps(
    method: VariationalMethod, global_arrays: Arrays, prior: Prior, client: ClientTensors
) -> Callable[[int], None]:
    """``steps`` local steps exactly as ``train_local`` takes them after its latent-first steps
    (its loop body with every weight trained)."""
    # Imported here: benchmarks/local_step.py imports this module's helpers under older source
    # trees (to time them), which may predate ClientViews.
    from fedvpa.model.objective import ClientViews, local_objective

    model = method._model(global_arrays)
    cfg = replace(method.cfg, ortho_lambda=method.cfg.ortho_lambda_at(ROUND))
    labelled = client.labelled
    views = ClientViews(labelled)
    batch = method.local.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in prior.parameters() if p.requires_grad and p.numel() > 0]
    optimiser = make_optimiser(method.local.local_optimiser, params, method.local.lr)
    labels = torch.zeros(batch, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    model.train()

    def run(steps: int) -> None:
        for step in range(steps):
            splits = [split_context_query(len(labelled), gen) for _ in range(batch)]
            context = views.contexts([c for c, _ in splits])
            queries = views.queries([q for _, q in splits])
            terms = local_objective(model, prior, context, queries, labels, cfg, gen, step, 2)
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()

    return run


def measure(
    num: int, max_components: int, args: argparse.Namespace, client: ClientTensors
) -> dict[str, Any]:
    model = {"input_dim": INPUT_DIM, "latent_dim": args.latent_dim}
    model["prior_max_components"] = max_components
    method = create_method("fedvpa-gp", {"model": model, "local": {}})
    assert isinstance(method, VariationalMethod)
    state = method.init_server_state(0)
    state = ServerState(state.arrays, {**state.extra, **make_store(num, args.latent_dim, 0)}, {})
    payload = method.client_payload(state, client.client_id, ROUND)
    cfg = method.cfg
    server_s = median_seconds(
        lambda: compress_prior_rows(state.extra, max_components, cfg.prior_var_floor),
        args.repeats,
    )
    prior = method._prior(payload, client.client_id, {})
    run = local_steps(method, state.arrays, prior, client)
    step_s = median_seconds(lambda: run(args.steps), args.repeats, args.steps)
    client_s = median_seconds(
        lambda: method.client_train(state.arrays, payload, client, {}, ROUND, 0),
        args.client_repeats,
    )
    return {
        "J": num,
        "K": max_components,
        "components_sent": int(payload["prior_n"].size),
        "step_ms": 1e3 * step_s,
        "client_round_ms": 1e3 * client_s,
        "local_steps": method.local.local_steps,
        "server_merge_ms": 1e3 * server_s,
        "prior_bytes": int(sum(payload[k].nbytes for k in PRIOR_KEYS)),
        "payload_bytes": int(sum(v.nbytes for v in payload.values())),
        "weights_bytes": int(sum(v.nbytes for v in state.arrays.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--max-components", type=int, nargs="+", default=[0, 16])
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=16, help="labelled pairs of the client")
    parser.add_argument("--steps", type=int, default=10, help="local steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--client-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default=None, help="write the rows here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # numpy's BLAS defaults to every core; on a shared machine that made a 10,000 x 8 matmul
    # 60x slower (measured), which would be charged to the server's merge.
    threadpool_limits(args.threads)
    client = make_client(args.pairs, 0)
    rows = []
    print(
        "| J | K | sent | step ms | client round ms | server merge ms | prior bytes/client/round "
        "| payload bytes | shared weights bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for num in args.components:
        for k in args.max_components:
            row = measure(num, k, args, client)
            rows.append(row)
            print(
                f"| {row['J']:,} | {row['K'] or '–'} | {row['components_sent']:,} "
                f"| {row['step_ms']:.2f} | {row['client_round_ms']:.0f} "
                f"| {row['server_merge_ms']:.2f} | {row['prior_bytes']:,} "
                f"| {row['payload_bytes']:,} | {row['weights_bytes']:,} |",
                flush=True,
            )
    if args.out:
        meta = {k: v for k, v in vars(args).items() if k != "out"}
        Path(args.out).write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
