"""Where centralised VPL loses to the per-type oracle: the selector, the latent, or the training.

Issue 10 asks whether the model's shortfall on the pluralistic data is the encoder, the selector
form, the latent size or the training. On one partition (pooled seen clients, no federation)
this prints, per seed, seen / unseen macro accuracy (%) of

- ``ideal``: the Bayes-optimal personalised accuracy of ``fedvpa headroom`` at the clients' k;
- ``oracle``: one Bradley-Terry model per true user type (the project's reference);
- ``given``: the project's selector (linear ``g``, logit-bias form) with ``z`` = the one-hot true
  type, trained on the pooled pairs: the selector form's capacity when the type is known;
- ``vpl``: centralised VPL as ``fedvpa compare`` runs it (early-stopped on 20 % held-out clients);
- ``vpl-all``: the same model trained on every seen client for ``--steps`` steps, no hold-out;
- ``axis``: how well the seen clients' posterior means under ``vpl-all`` carry the types (5-fold
  logistic regression of each taste axis's pole from the means; data whose type names are poles
  joined by ``-``, as in the ``plural-*`` family and ``synthetic-4``);
- ``scaled``: ``vpl-all`` with ``z`` scaled by 2 at prediction (is ``z`` merely too small?);
- ``population``: ``vpl-all`` with each client's ``z`` read as ``latent-inference =
  "population"`` reads it (the posterior mean under the seen clients' posterior means as
  equally weighted point masses, given the client's pairs): is the encoder's placement of a
  client, rather than the selector, what is lost?
- ``prior-draws``: the same Bayes step over ``PRIOR_DRAWS`` draws from the model's prior
  ``N(0, I)`` instead of the clients' means (self-normalised importance sampling of the exact
  posterior mean): does the gain need the population, which FedVPL's clients do not send?
- ``refit``: ``g`` and the selector trained afresh with each client's ``z`` fixed at its
  ``vpl-all`` posterior mean (from all of its labelled pairs, as at evaluation), early-stopped on
  20 % held-out clients; ``--disjoint`` reads ``z`` from two thirds of a client's pairs and fits
  the other third instead (four draws per client).

    .venv/bin/python benchmarks/selector_diagnosis.py --config conf/plural-4.toml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from torch import nn

from fedvpa.config import load_toml
from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.errors import ConfigError
from fedvpa.evaluation.accuracy import evaluate
from fedvpa.evaluation.headroom import client_headroom
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import PairFeature
from fedvpa.model.selector import LogitBiasSelector
from fedvpa.training.centralised import client_means, train_centralised_vpl, train_oracle
from fedvpa.training.local import PopulationPredictor, posterior_of

PRIOR_DRAWS = 4096  # samples of N(0, I) for the ``prior-draws`` column
PairLogit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FixedLatentSelector(nn.Module):
    """``g`` and the logit-bias selector, read with a ``z`` given from outside (not inferred)."""

    def __init__(self, cfg: ModelConfig, latent_dim: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.feature = PairFeature.from_config(cfg)
            self.selector = LogitBiasSelector(cfg.feature_dim, latent_dim)

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.selector(self.feature(emb_a), self.feature(emb_b), z)


class FixedLatentPredictor:
    """Predicts a client's pairs with its fixed ``z`` (the ``evaluate`` predictor protocol)."""

    def __init__(self, model: FixedLatentSelector, latent: dict[int, torch.Tensor]):
        self.model, self.latent = model, latent

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        z = self.latent[client.client_id].expand(len(pairs), -1)
        with torch.no_grad():
            return torch.sigmoid(self.model(pairs.emb_a, pairs.emb_b, z))


def fit_fixed_latent(
    rows: Sequence[tuple[ClientTensors, PairTensors, torch.Tensor]],
    cfg: ModelConfig,
    seed: int,
    steps: int = 1500,
    lr: float = 1e-3,
    batch: int = 256,
) -> FixedLatentSelector:
    """Minibatch Adam on ``(client, pairs, z)`` rows; early-stopped on 20 % of the clients."""
    gen = torch.Generator().manual_seed(seed)
    ids = sorted({c.client_id for c, _, _ in rows})
    held = set(torch.tensor(ids)[torch.randperm(len(ids), generator=gen)[: len(ids) // 5]].tolist())

    def pool(keep: Callable[[int], bool]) -> tuple[PairTensors, torch.Tensor]:
        part = [(p, z.expand(len(p), -1)) for c, p, z in rows if keep(c.client_id)]
        return PairTensors.concat([p for p, _ in part]), torch.cat([z for _, z in part])

    fit, fit_z = pool(lambda cid: cid not in held)
    val, val_z = pool(lambda cid: cid in held)
    model = FixedLatentSelector(cfg, fit_z.shape[-1], seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    best, state = float("inf"), None
    for step in range(steps + 1):
        if step % 25 == 0:
            with torch.no_grad():
                loss = F.binary_cross_entropy_with_logits(
                    model(val.emb_a, val.emb_b, val_z), val.label
                )
            if float(loss) < best:
                best, state = float(loss), {k: v.clone() for k, v in model.state_dict().items()}
        if step == steps:
            break
        idx = torch.randint(0, len(fit), (min(batch, len(fit)),), generator=gen)
        loss = F.binary_cross_entropy_with_logits(
            model(fit.emb_a[idx], fit.emb_b[idx], fit_z[idx]), fit.label[idx]
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    assert state is not None
    model.load_state_dict(state)
    return model.eval()


def axis_separability(means: np.ndarray, type_names: Sequence[str]) -> list[float]:
    """5-fold accuracy of predicting each taste axis's pole from the posterior means."""
    poles = [name.split("-") for name in type_names]
    out = []
    for axis in range(len(poles[0])):
        labels = [p[axis] for p in poles]
        model = LogisticRegression(C=1.0, max_iter=2000)
        out.append(float(cross_val_score(model, means, labels, cv=5).mean()))
    return out


def accuracy(report: dict[str, Any]) -> tuple[float, float]:
    return 100 * report["seen"]["macro"], 100 * report["unseen"]["macro"]


def diagnose(flat: dict[str, Any], seed: int, steps: int, disjoint: bool) -> dict[str, Any]:
    exp = ExperimentConfig.from_flat({**flat, "seed": seed}, source="diagnosis")
    clients = prepare_clients(exp.data, exp.embedding, seed, progress=False).clients
    cfg = replace(exp.model, input_dim=clients[0].context.dim)
    if cfg.selector != "logit-bias":  # the given / scaled / refit columns read its W
        raise ConfigError("the diagnosis needs the logit-bias selector", field="selector")
    vpl_cfg = replace(cfg, use_ortho=False, prior="standard")
    seen = [c for c in clients if not c.unseen and len(c.labelled) >= 2]
    out: dict[str, Any] = {"seed": seed}
    user_types = sorted(
        {c.user_type for c in clients},
        key=lambda t: next(c.type_index for c in clients if c.user_type == t),
    )
    headroom = client_headroom(clients, user_types, seed)
    by_k = {p["k"]: 100 * p["macro_accuracy"] for p in headroom["points"]}
    sizes = headroom["context_sizes"]
    out["ideal"] = (by_k[sizes["seen"]], by_k[sizes["unseen"]])
    out["oracle"] = accuracy(evaluate(train_oracle(clients, cfg, seed=seed), clients))

    num_types = 1 + max(c.type_index for c in clients)
    one_hot = {
        c.client_id: F.one_hot(torch.tensor(c.type_index), num_types).float() for c in clients
    }
    given = fit_fixed_latent([(c, c.labelled, one_hot[c.client_id]) for c in seen], cfg, seed)
    out["given"] = accuracy(evaluate(FixedLatentPredictor(given, one_hot), clients))

    out["vpl"] = accuracy(evaluate(train_centralised_vpl(clients, vpl_cfg, seed=seed), clients))
    vpl = train_centralised_vpl(clients, vpl_cfg, seed=seed, steps=steps, holdout=0.0)
    out["vpl-all"] = accuracy(evaluate(vpl, clients))
    means = client_means(vpl.model, clients)
    seen_rows = [i for i, c in enumerate(clients) if not c.unseen]
    out["axis"] = axis_separability(means[seen_rows], [clients[i].user_type for i in seen_rows])

    coupling = vpl.model.selector.bias.weight
    with torch.no_grad():
        coupling.mul_(2.0)
        out["scaled"] = accuracy(evaluate(vpl, clients))
        coupling.div_(2.0)

    seen_ids = {c.client_id for c in seen}
    population = torch.as_tensor(
        means[[i for i, c in enumerate(clients) if c.client_id in seen_ids]]
    )
    out["population"] = accuracy(
        evaluate(PopulationPredictor(vpl.model, population, torch.ones(len(population))), clients)
    )
    draws = torch.randn(PRIOR_DRAWS, cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    out["prior-draws"] = accuracy(
        evaluate(PopulationPredictor(vpl.model, draws, torch.ones(PRIOR_DRAWS)), clients)
    )

    latent = {c.client_id: torch.as_tensor(m) for c, m in zip(clients, means, strict=True)}
    gen = torch.Generator().manual_seed(seed)
    rows: list[tuple[ClientTensors, PairTensors, torch.Tensor]] = []
    for c in seen:
        if not disjoint:
            rows.append((c, c.labelled, latent[c.client_id]))
            continue
        for _ in range(4):
            perm = torch.randperm(len(c.labelled), generator=gen)
            cut = max(1, 2 * len(c.labelled) // 3)
            with torch.no_grad():
                z = posterior_of(vpl.model, c.labelled.subset(perm[:cut]))[0]
            rows.append((c, c.labelled.subset(perm[cut:]), z))
    refit = fit_fixed_latent(rows, cfg, seed)
    out["refit"] = accuracy(evaluate(FixedLatentPredictor(refit, latent), clients))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a conf/*.toml (data and partition)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1500, help="vpl-all's training steps")
    parser.add_argument("--disjoint", action="store_true", help="refit on held-apart pairs")
    parser.add_argument("--json", default=None, help="append one JSON line per seed here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flat = load_toml(args.config)
    cols = (
        "ideal",
        "oracle",
        "given",
        "vpl",
        "vpl-all",
        "scaled",
        "population",
        "prior-draws",
        "refit",
    )
    print("| seed | " + " | ".join(cols) + " | axis poles from the means | time |")
    print("|---" * (len(cols) + 3) + "|")
    for seed in args.seeds:
        start = time.perf_counter()
        row = diagnose(flat, seed, args.steps, args.disjoint)
        cells = [f"{row[c][0]:.1f} / {row[c][1]:.1f}" for c in cols]
        axes = ", ".join(f"{100 * a:.0f} %" for a in row["axis"])
        print(
            f"| {seed} | "
            + " | ".join(cells)
            + f" | {axes} | {time.perf_counter() - start:.0f} s |",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(
                    json.dumps({"config": args.config, "disjoint": args.disjoint, **row}) + "\n"
                )


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # a bad file, key or combination: one line, as `fedvpa run`
        print(f"selector_diagnosis: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
