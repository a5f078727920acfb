"""The local objective of a client (paper Eq. 10), on padded batches of clients.

``L = E_q[-log P(query labels | z)] + beta * KL(q || prior) + L_orth``. The NLL is the negative
log-likelihood of *all* of a client's query labels (a sum over its query pairs, as in the ELBO;
``nll_reduction="mean"`` divides by the number of queries instead), the KL is per client (summed
over dimensions); both are then averaged over the clients of the batch. With the per-pair mean
and ``beta = 0.1`` the KL outweighs what ``z`` can explain early in training and the reward-form
posterior collapses even on the toy data. With the sum, the reward form still collapses on the
embedded synthetic data (N(0, I), no L_orth: 0 active units, conflict pairs at chance) unless
``beta`` is ~0.01, while the logit-bias form does not: hence the logit-bias default.

No label leakage: ``z`` comes only from the context set, and
the caller guarantees that the context and the queries are disjoint pair sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedvpa.embeddings.tensors import PairTensors
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import reparameterise
from fedvpa.model.priors import Prior, prior_reading_points
from fedvpa.model.vpl import VariationalPreferenceModel


@dataclass
class ContextBatch:
    """Oriented context pairs of ``B`` clients padded to ``K``: ``[B, K, D]``, mask ``[B, K]``."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    mask: torch.Tensor


@dataclass
class QueryBatch:
    """Query pairs of ``B`` clients padded to ``Q``: ``[B, Q, D]``, label and mask ``[B, Q]``."""

    emb_a: torch.Tensor
    emb_b: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor


@dataclass
class LossTerms:
    """The objective and its parts (``total`` keeps its graph; the rest are detached)."""

    total: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    # The query NLL at the read z; None when read_weight is 0, so that runs without the read
    # term report (and send) exactly the metrics they always did.
    read_nll: torch.Tensor | None
    orth_pull: torch.Tensor
    orth_norm: torch.Tensor
    accuracy: torch.Tensor
    mu: torch.Tensor  # [B, d] posterior means (detached), for diagnostics
    logvar: torch.Tensor  # [B, d]

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "loss": float(self.total.detach()),
            "nll": float(self.nll),
            "kl": float(self.kl),
            "orth_pull": float(self.orth_pull),
            "orth_norm": float(self.orth_norm),
            "accuracy": float(self.accuracy),
        }
        if self.read_nll is not None:
            metrics["read_nll"] = float(self.read_nll)
        return metrics


def _pad(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros((len(tensors), length, *tensors[0].shape[1:]), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def _mask(sizes: list[int], length: int) -> torch.Tensor:
    return torch.arange(length).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)


def pad_contexts(contexts: list[PairTensors]) -> ContextBatch:
    """Orient each client's context chosen-minus-rejected and pad to the longest one."""
    if not contexts or any(len(c) == 0 for c in contexts):
        raise ValueError("every client needs at least one context pair")
    oriented = [c.oriented() for c in contexts]
    sizes = [len(c) for c in contexts]
    k = max(sizes)
    return ContextBatch(
        _pad([o[0] for o in oriented], k), _pad([o[1] for o in oriented], k), _mask(sizes, k)
    )


def pad_queries(queries: list[PairTensors]) -> QueryBatch:
    if not queries or any(len(q) == 0 for q in queries):
        raise ValueError("every client needs at least one query pair")
    sizes = [len(q) for q in queries]
    n = max(sizes)
    return QueryBatch(
        _pad([q.emb_a for q in queries], n),
        _pad([q.emb_b for q in queries], n),
        _pad([q.label for q in queries], n),
        _mask(sizes, n),
    )


class ClientViews:
    """One client's labelled pairs, oriented and padded once, from which each local step gathers
    its context / query views with one index per tensor.

    ``pad_contexts`` / ``pad_queries`` on ``subset`` copies give the same tensors; building them
    by gather avoids a dozen small copies per view and step, which dominated the step's Python
    time on a model this small. Row ``n`` of every stored tensor is zeros: padding gathers it.
    """

    def __init__(self, pairs: PairTensors) -> None:
        n = len(pairs)
        chosen, rejected = pairs.oriented()

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, torch.zeros((1, *t.shape[1:]), dtype=t.dtype)])

        self.size = n
        self._chosen, self._rejected = padded(chosen), padded(rejected)
        self._emb_a, self._emb_b = padded(pairs.emb_a), padded(pairs.emb_b)
        self._label = padded(pairs.label)

    def _index(self, sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not sets or any(len(s) == 0 for s in sets):
            raise ValueError("every view needs at least one pair")
        sizes = [len(s) for s in sets]
        mask = _mask(sizes, max(sizes))
        index = torch.full(mask.shape, self.size, dtype=torch.long)
        index[mask] = torch.cat(sets)
        return index, mask

    def contexts(self, sets: list[torch.Tensor]) -> ContextBatch:
        index, mask = self._index(sets)
        return ContextBatch(self._chosen[index], self._rejected[index], mask)

    def queries(self, sets: list[torch.Tensor]) -> QueryBatch:
        index, mask = self._index(sets)
        return QueryBatch(self._emb_a[index], self._emb_b[index], self._label[index], mask)


@dataclass
class StepNoise:
    """Every random number of one ``local_objective`` call: the posterior samples ``z_eps [S,
    B, d]`` and the prior's (``Prior.draw_noise``)."""

    z_eps: torch.Tensor
    prior: dict[str, torch.Tensor]


def read_over_points(
    model: VariationalPreferenceModel,
    oriented: torch.Tensor,
    mask: torch.Tensor,
    points: torch.Tensor,
) -> torch.Tensor:
    """``z [B, d]`` read from context pair features ``g(chosen) - g(rejected)`` ``[B, K, F]``
    as evaluation reads it under ``latent-inference = "prior"``: the posterior mean over
    equally weighted ``points [J, d]``, each weighed by the selector's likelihood of the
    context's choices there (``population_latent`` with ``n_j = 1``, for a batch and with its
    graph), with the selector's one-product ``grid``. An empty context gives the points'
    mean."""
    logits = model.selector.grid_of_features(oriented, points)  # [B, J, K]
    loglik = (F.logsigmoid(logits) * mask.to(logits.dtype).unsqueeze(-2)).sum(-1)  # [B, J]
    return torch.softmax(loglik, dim=-1) @ points


def _query_nll(logits: torch.Tensor, queries: QueryBatch, cfg: ModelConfig) -> torch.Tensor:
    """Mean over clients (and samples) of each client's query NLL, ``cfg.nll_reduction``."""
    labels = queries.label.expand_as(logits)
    qmask = queries.mask.to(logits.dtype)
    per_pair = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    per_client = (per_pair * qmask).sum(-1)
    if cfg.nll_reduction == "mean":
        per_client = per_client / qmask.sum(-1).clamp_min(1.0)
    return per_client.mean()


def draw_step_noise(
    cfg: ModelConfig,
    prior: Prior,
    batch: int,
    training: bool,
    generator: torch.Generator | None = None,
) -> StepNoise:
    """The random numbers of one step for ``batch`` views, in the order ``local_objective``
    consumes them (the posterior's samples, then the prior's), so drawing them up front gives
    the numbers the step would have drawn itself."""
    z_eps = torch.randn((cfg.z_samples, batch, cfg.latent_dim), generator=generator)
    return StepNoise(z_eps, prior.draw_noise(batch, training, generator))


def local_objective(
    model: VariationalPreferenceModel,
    prior: Prior,
    context: ContextBatch,
    queries: QueryBatch | list[PairTensors],
    proto_labels: torch.Tensor | None,
    cfg: ModelConfig,
    generator: torch.Generator | None = None,
    step: int = 0,
    num_groups: int | None = None,
    noise: StepNoise | None = None,
    validate: bool = True,
    featurised: bool = False,
    fused_encoder: bool = False,
    points: torch.Tensor | None = None,
) -> LossTerms:
    """Paper Eq. 10 for a batch of ``B`` clients (or ``B`` context/query views of one client).

    ``proto_labels [B]`` are the server-assigned prototypes; ``None`` (or ``cfg.use_ortho`` off)
    drops ``L_orth``. ``num_groups`` (default: every prototype) limits the orthonormality term
    to the prototypes in use. ``noise`` (``draw_step_noise``) replaces the draws from
    ``generator``; with it and ``validate=False`` the objective is a pure function of tensors,
    which the batched local step maps over clients. ``featurised``: the context and query
    tensors hold the pair feature's outputs ``g(h)`` instead of embeddings ``h``;
    ``fused_encoder`` (with ``featurised``): see ``VariationalPreferenceModel.encode``.
    ``points``: what the read term (``cfg.read_weight``) reads ``z`` over; default
    ``prior_reading_points`` of ``cfg``.
    """
    if isinstance(queries, list):
        queries = pad_queries(queries)
    if noise is None:
        noise = draw_step_noise(cfg, prior, context.mask.shape[0], model.training, generator)
    # The context's pair features, once: the encoder reads them, and so does the read term.
    if featurised:
        oriented = context.chosen - context.rejected
        mu, logvar = model.encode(oriented, context.mask, validate, fused=fused_encoder)
    else:  # what model.posterior does, keeping the features
        oriented = model.feature.pair(context.chosen, context.rejected)
        mu, logvar = model.encode(oriented, context.mask, validate)
    z = reparameterise(mu, logvar, cfg.z_samples, eps=noise.z_eps.to(mu))  # [S, B, d]
    score = model.logit_from_features if featurised else model.logit
    logits = score(queries.emb_a, queries.emb_b, z.unsqueeze(-2))  # [S, B, Q]
    nll = _query_nll(logits, queries, cfg)  # per client: the NLL of all its query labels
    kl = prior.kl(mu, logvar, training=model.training, noise=noise.prior).mean()
    total = nll + cfg.beta_at(step) * kl
    zero = torch.zeros(())
    read_nll = None
    if cfg.read_weight > 0:
        if points is None:
            points = prior_reading_points(cfg.latent_dim, cfg.prior_draws)
        z_read = read_over_points(model, oriented, context.mask, points)  # [B, d]
        read_nll = _query_nll(
            score(queries.emb_a, queries.emb_b, z_read.unsqueeze(-2)), queries, cfg
        )
        total = total + cfg.read_weight * read_nll
    pull, norm = zero, zero
    if cfg.use_ortho and proto_labels is not None:
        pull = model.prototypes.pull_loss(mu if cfg.pull_on == "mu" else z, proto_labels)
        norm = model.prototypes.orthonormality_loss(num_groups)
        total = total + cfg.ortho_lambda * pull + cfg.ortho_gamma * norm
    with torch.no_grad():
        correct = ((logits.mean(0) > 0).float() == queries.label).float() * queries.mask
        accuracy = correct.sum() / queries.mask.sum()
    return LossTerms(
        total,
        nll.detach(),
        kl.detach(),
        None if read_nll is None else read_nll.detach(),
        pull.detach(),
        norm.detach(),
        accuracy,
        mu.detach(),
        logvar.detach(),
    )
