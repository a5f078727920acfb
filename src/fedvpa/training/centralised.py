"""Pooled-data references that validate the model before any federation.

- centralised VPL: the same latent model and objective, every seen client's data in one place;
- per-type oracle: one Bradley-Terry model per user type on that type's pooled data, each client
  predicted by its *true* type's model (the ceiling for any personalised method);
- monolithic: one Bradley-Terry model on everything (what FedAvg-BT can at best reach).

All three train on the labelled pairs (context + train) of seen clients only, never on test
pairs and never on unseen clients, so they are compared on the same footing as the federation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import PairFeature
from fedvpa.model.objective import local_objective, pad_contexts, pad_queries
from fedvpa.model.priors import Prior, StandardNormalPrior
from fedvpa.model.prototypes import assign_prototype_labels
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.training.local import (
    VPLPredictor,
    infer_posterior,
    posterior_of,
    split_context_query,
)


def _seen(clients: Sequence[ClientTensors]) -> list[ClientTensors]:
    seen = [c for c in clients if not c.unseen and len(c.labelled) >= 2]
    if not seen:
        raise ValueError("no seen client with at least 2 labelled pairs to train on")
    return seen


def _prototype_labels(
    model: VariationalPreferenceModel, clients: list[ClientTensors], seed: int
) -> torch.Tensor:
    """Server-style balanced prototype labels from every client's current posterior mean."""
    model.eval()
    with torch.no_grad():
        mu = torch.stack([posterior_of(model, c.labelled)[0] for c in clients])
    model.train()
    protos = model.prototypes.weight.detach().numpy()
    return torch.as_tensor(assign_prototype_labels(mu.numpy(), protos, seed), dtype=torch.long)


def _validation_nll(
    model: VariationalPreferenceModel, clients: list[ClientTensors], cfg: ModelConfig
) -> float:
    """Mean query NLL of held-out clients, ``z = mu`` from the first half of their pairs."""
    contexts, queries = [], []
    for c in clients:
        pairs = c.labelled
        half = max(1, len(pairs) // 2)
        contexts.append(pairs.subset(torch.arange(half)))
        queries.append(pairs.subset(torch.arange(half, len(pairs))))
    model.eval()
    with torch.no_grad():
        ctx, qry = pad_contexts(contexts), pad_queries(queries)
        mu, _ = model.posterior(ctx.chosen, ctx.rejected, ctx.mask)
        logits = model.logit(qry.emb_a, qry.emb_b, mu.unsqueeze(-2))
        nll = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, qry.label, reduction="none"
        )
        value = float((nll * qry.mask).sum() / qry.mask.sum())
    model.train()
    return value


def train_centralised_vpl(
    clients: Sequence[ClientTensors],
    cfg: ModelConfig,
    steps: int = 1000,
    lr: float = 1e-3,
    seed: int = 0,
    batch_clients: int = 16,
    prior: Prior | None = None,
    relabel_every: int = 100,
    holdout: float = 0.2,
    eval_every: int = 25,
) -> VPLPredictor:
    """Centralised VPL: batches of clients, each with its own random context/query split.

    ``prior`` defaults to ``N(0, I)``; with ``cfg.use_ortho`` the prototype labels are recomputed
    by balanced k-means every ``relabel_every`` steps, as the server would between rounds.
    ``holdout`` of the seen clients (whole clients) are held out to early-stop on their query NLL
    (the latent model memorises weak-signal data like any MLP); ``holdout=0`` disables it.
    """
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    gen = torch.Generator().manual_seed(seed)
    everyone = _seen(clients)
    fit_idx, val_idx = _holdout_split(len(everyone), holdout, gen)
    seen = [everyone[i] for i in sorted(fit_idx.tolist())]
    val = [everyone[i] for i in sorted(val_idx.tolist())]
    model = VariationalPreferenceModel(cfg, seed)
    prior = prior if prior is not None else StandardNormalPrior()
    params = list(model.parameters()) + [p for p in prior.parameters() if p.numel() > 0]
    optimiser = torch.optim.Adam(params, lr=lr)
    labelled = [c.labelled for c in seen]
    proto = None
    best_loss, best_state = float("inf"), None
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps + 1):
            if val and step % eval_every == 0:
                val_loss = _validation_nll(model, val, cfg)
                if val_loss < best_loss:
                    best_loss = val_loss
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if step == steps:
                break
            if cfg.use_ortho and step % relabel_every == 0:
                proto = _prototype_labels(model, seen, seed + step)
            batch = torch.randperm(len(seen), generator=gen)[: min(batch_clients, len(seen))]
            contexts, queries = [], []
            for i in batch.tolist():
                ctx, qry = split_context_query(len(labelled[i]), gen)
                contexts.append(labelled[i].subset(ctx))
                queries.append(labelled[i].subset(qry))
            labels = proto[batch] if proto is not None else None
            terms = local_objective(
                model, prior, pad_contexts(contexts), pad_queries(queries), labels, cfg, gen, step
            )
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return VPLPredictor(model)


class BradleyTerry(nn.Module):
    """A reward head without ``z``: ``logit = w . (g(h_A) - g(h_B))`` (antisymmetric)."""

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.feature = PairFeature.from_config(cfg)
            self.head = nn.Linear(cfg.feature_dim, 1, bias=False)

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature.pair(emb_a, emb_b)).squeeze(-1)


def _holdout_split(n: int, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(train, holdout) index sets; no holdout when ``fraction`` is 0 or ``n`` is tiny."""
    perm = torch.randperm(n, generator=gen)
    k = int(round(fraction * n))
    if fraction <= 0 or k < 1 or n - k < 1:
        return perm, perm[:0]
    return perm[k:], perm[:k]


def train_bradley_terry(
    pairs: PairTensors,
    cfg: ModelConfig,
    steps: int = 500,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    holdout: float = 0.2,
    eval_every: int = 10,
) -> BradleyTerry:
    """Minibatch Adam on the Bradley-Terry likelihood of pooled pairs, early-stopped.

    A 384-d MLP memorises a few hundred weak-signal pairs within ~100 steps (relabeled HH-RLHF:
    100% train, 52% test after 500 steps), so ``holdout`` of the pairs choose the step with the
    lowest held-out NLL and those weights are returned (``holdout=0``: plain ``steps`` steps).
    """
    if len(pairs) == 0:
        raise ValueError("no pairs to train a Bradley-Terry model on")
    model = BradleyTerry(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = _holdout_split(len(pairs), holdout, gen)
    fit, val = pairs.subset(fit_idx), pairs.subset(val_idx)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    best_loss, best_state = float("inf"), None
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps + 1):
            if len(val) and step % eval_every == 0:
                model.eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(model(val.emb_a, val.emb_b), val.label))
                model.train()
                if val_loss < best_loss:
                    best_loss = val_loss
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if step == steps:
                break
            idx = torch.randint(0, len(fit), (min(batch_size, len(fit)),), generator=gen)
            loss = loss_fn(model(fit.emb_a[idx], fit.emb_b[idx]), fit.label[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


class BTPredictor:
    """One Bradley-Terry model for every client."""

    def __init__(self, model: BradleyTerry):
        self.model = model

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.model(pairs.emb_a, pairs.emb_b))


class OraclePredictor:
    """Each client predicted by the model of its true user type."""

    def __init__(self, models: dict[int, BradleyTerry]):
        self.models = models

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        if client.type_index not in self.models:
            raise ValueError(f"the oracle has no model for user type {client.user_type!r}")
        with torch.no_grad():
            return torch.sigmoid(self.models[client.type_index](pairs.emb_a, pairs.emb_b))


def train_oracle(
    clients: Sequence[ClientTensors],
    cfg: ModelConfig,
    steps: int = 500,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    holdout: float = 0.2,
) -> OraclePredictor:
    """One Bradley-Terry model per user type on that type's pooled seen-client pairs."""
    seen = _seen(clients)
    models = {}
    for t in sorted({c.type_index for c in seen}):
        pooled = PairTensors.concat([c.labelled for c in seen if c.type_index == t])
        models[t] = train_bradley_terry(
            pooled, cfg, steps, lr, seed + 1000 * (t + 1), batch_size, weight_decay, holdout
        )
    return OraclePredictor(models)


def train_monolithic(
    clients: Sequence[ClientTensors],
    cfg: ModelConfig,
    steps: int = 500,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    holdout: float = 0.2,
) -> BTPredictor:
    """One Bradley-Terry model on every seen client's pairs (the averaged preference)."""
    pooled = PairTensors.concat([c.labelled for c in _seen(clients)])
    model = train_bradley_terry(pooled, cfg, steps, lr, seed, batch_size, weight_decay, holdout)
    return BTPredictor(model)


def client_means(model: VariationalPreferenceModel, clients: Sequence[ClientTensors]) -> np.ndarray:
    """Evaluation posterior means of the clients, ``[N, d]`` (for diagnostics and plots)."""
    return torch.stack([infer_posterior(model, c)[0] for c in clients]).numpy()
