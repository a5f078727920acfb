"""Can the user types be found WITHOUT type labels? EM over a mixture of two linear probes.

A latent model has to discover the types from the clients' labels alone before ``z`` can carry
them. This script asks the same question without any neural model: it fits a two-component
mixture of logistic probes (on ``emb(A) - emb(B)``) over the seen clients by EM, soft
(responsibilities) or hard (each client to its most likely component, as in clustered FL), with
restarts, and reports

- purity: the share of seen clients whose component matches their true type (up to relabelling);
- the mean largest responsibility (0.5 = the components are indistinguishable: a collapsed mixture);
- held-out accuracy of each client's mixture prediction, next to the supervised per-type probes
  (true types known) and the monolithic probe, all with the same regularisation.

    .venv/bin/python benchmarks/type_discovery.py \
        --relabeled ../shared/data/relabeled-hh-rlhf/dev.jsonl.gz --pairs-per-client 80 \
        --num-clients 34 --split 0.6 0.2 0.2 --em hard
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
from centralised_check import load_clients  # same partition and embedding as that benchmark
from sklearn.linear_model import LogisticRegression

from fedvpa.embeddings.backbone import make_backbone
from fedvpa.embeddings.cache import EmbeddingCache
from fedvpa.embeddings.tensors import PairTensors


def xy(pairs: PairTensors) -> tuple[np.ndarray, np.ndarray]:
    return (pairs.emb_a - pairs.emb_b).numpy().astype(np.float64), pairs.label.numpy().astype(int)


def probe(x: np.ndarray, y: np.ndarray, c: float, weight: np.ndarray | None = None):
    return LogisticRegression(C=c, fit_intercept=False, max_iter=3000).fit(
        x, y, sample_weight=weight
    )


def log_lik(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(model.predict_proba(x)[np.arange(len(y)), y], 1e-12, 1.0)
    return float(np.log(p).sum())


def em(data: list[tuple[np.ndarray, np.ndarray]], hard: bool, c: float, restarts: int, iters: int):
    """Best-of-restarts EM by total log-likelihood; returns (responsibilities, models)."""
    xs = np.vstack([x for x, _ in data])
    ys = np.concatenate([y for _, y in data])
    sizes = [len(y) for _, y in data]
    best = None
    for restart in range(restarts):
        resp = np.random.default_rng(restart).dirichlet([1.0, 1.0], len(data))
        if hard:
            resp = np.eye(2)[resp.argmax(1)]
        for _ in range(iters):
            models = [probe(xs, ys, c, np.repeat(resp[:, j], sizes) + 1e-6) for j in range(2)]
            ll = np.array([[log_lik(m, x, y) for m in models] for x, y in data])
            total = float(np.logaddexp(ll[:, 0], ll[:, 1]).sum())
            new = np.exp(ll - ll.max(1, keepdims=True))
            new /= new.sum(1, keepdims=True)
            if hard:
                new = np.eye(2)[new.argmax(1)]
            if np.allclose(new, resp):
                break
            resp = new
        if best is None or total > best[0]:
            best = (total, resp, models)
    assert best is not None
    return best[1], best[2]


def accuracy(rows: list[np.ndarray]) -> float:
    return float(np.concatenate(rows).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relabeled", required=True, help="relabeled HH-RLHF dev.jsonl(.gz)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--pairs-per-client", type=int, default=16)
    parser.add_argument("--split", type=float, nargs=3, default=[0.5, 0.25, 0.25])
    parser.add_argument("--em", choices=["soft", "hard"], default="soft")
    parser.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of every probe")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--cache", default=os.environ.get("FEDVPA_CACHE", "/tmp/fedvpa-cache"))
    args = parser.parse_args()
    cache = EmbeddingCache(Path(args.cache) / "embeddings")
    backbone = make_backbone("minilm", device="cpu")
    summary: dict[str, list[float]] = {}
    for seed in args.seeds:
        clients = load_clients("relabeled-hh", args.relabeled, seed, cache, backbone, args)
        seen = [c for c in clients if not c.unseen]
        types = np.array([c.type_index for c in seen])
        train = [xy(c.labelled) for c in seen]
        test = [xy(c.test) for c in seen]
        resp, models = em(train, args.em == "hard", args.c, args.restarts, args.iters)
        assign = resp.argmax(1)
        purity = max((assign == types).mean(), (assign != types).mean())
        supervised = [
            probe(
                np.vstack([x for (x, _), t in zip(train, types, strict=True) if t == j]),
                np.concatenate([y for (_, y), t in zip(train, types, strict=True) if t == j]),
                args.c,
            )
            for j in (0, 1)
        ]
        mono = probe(
            np.vstack([x for x, _ in train]), np.concatenate([y for _, y in train]), args.c
        )
        scores: dict[str, dict[int, list[np.ndarray]]] = {
            k: {0: [], 1: []} for k in ("em", "supervised", "mono")
        }
        for i, (x, y) in enumerate(test):
            p_mix = sum(resp[i, j] * models[j].predict_proba(x)[:, 1] for j in (0, 1))
            t = int(types[i])
            scores["em"][t].append((p_mix > 0.5) == y)
            scores["supervised"][t].append((supervised[t].predict_proba(x)[:, 1] > 0.5) == y)
            scores["mono"][t].append((mono.predict_proba(x)[:, 1] > 0.5) == y)
        macro = {k: 100 * np.mean([accuracy(v[0]), accuracy(v[1])]) for k, v in scores.items()}
        row = {
            "purity": 100 * purity,
            "max_resp": float(resp.max(1).mean()),
            **{f"{k}_macro": v for k, v in macro.items()},
        }
        for key, value in row.items():
            summary.setdefault(key, []).append(value)
        print(
            f"seed {seed} ({len(seen)} seen clients, {args.em} EM): purity {row['purity']:.0f} %, "
            f"mean max responsibility {row['max_resp']:.2f}; held-out macro: EM mixture "
            f"{macro['em']:.1f}, supervised per-type {macro['supervised']:.1f}, "
            f"monolithic {macro['mono']:.1f}",
            flush=True,
        )
    if len(args.seeds) > 1:
        print(
            "mean (sd): "
            + ", ".join(
                f"{k} {statistics.mean(v):.2f} ({statistics.stdev(v):.2f})"
                for k, v in summary.items()
            )
        )


if __name__ == "__main__":
    main()
