"""The local steps of many clients as one vectorised pass: ``train_local`` for a node's clients.

A node of the simulation holds many clients (``clients-per-node``), and each trains a model of
about 30,000 weights on a dozen pairs: tensors so small that ``train_local``'s time is Python and
per-call overhead, not arithmetic (cProfile: about 1,700 calls a step). Here every client of a
round keeps its own copy of the weights, stacked along a new first dimension, and
``torch.func.vmap`` runs one step of all of them as one call. The algorithm is ``train_local``'s:
each client draws its context/query splits and its noise from its own generator in
``train_local``'s order before the vectorised pass, its loss reaches only its own slice of the
weights, and Adam, being elementwise, updates each slice as it would update the client alone.
The arithmetic is arranged differently (the pair feature ``g`` reads each of a client's pairs
once, the odd encoder reads a view and its reversal in one call, the mixture densities are
matrix products), so the results agree with ``train_local``'s up to floating-point rounding
(``tests/test_batched_training.py``: 1e-5 after 8 SGD steps), not to the bit.

What cannot be batched this way falls back to ``train_local`` (``batch_reason`` says why):
dropout (its masks come from the global generator, inside the pass), FedProx, or clients whose
priors differ in more than their private weights and exclusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.model.config import ModelConfig
from fedvpa.model.diagnostics import moment_match
from fedvpa.model.objective import (
    ContextBatch,
    QueryBatch,
    StepNoise,
    draw_step_noise,
    local_objective,
)
from fedvpa.model.priors import (
    FederatedMixturePrior,
    Prior,
    StandardNormalPrior,
    mixture_kl,
    prior_reading_points,
)
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.training.local import (
    LocalResult,
    is_latent_parameter,
    make_optimiser,
    split_context_query,
)

TERMS = ("loss", "nll", "kl", "orth_pull", "orth_norm", "accuracy")


@dataclass
class ClientJob:
    """One client of a batched round: its pairs, its prior, its prototype label and seed."""

    client: ClientTensors
    prior: Prior
    proto_label: int | None
    seed: int


@dataclass
class BatchedResult:
    """A client's trained weights (as ``shared_state`` gives them), its ``LocalResult`` and its
    mixture weights' logits after training (``None`` under ``N(0, I)``)."""

    arrays: dict[str, np.ndarray]
    result: LocalResult
    pi_logits: torch.Tensor | None


def settings_batch_reason(
    cfg: ModelConfig, prox_mu: float, validation_share: float = 0.0
) -> str | None:
    """Why no clients of a run with these settings can share a pass (``None``: they can), known
    before any round: the start-up note of a run with ``batched-clients`` on."""
    if cfg.dropout > 0 or cfg.input_dropout > 0:
        return "dropout draws its masks from the global generator inside the pass"
    if prox_mu > 0:
        return "the proximal term is not batched"
    if validation_share > 0:
        return "a validation share is scored client by client"
    return None


def batch_reason(cfg: ModelConfig, prox_mu: float, jobs: Sequence[ClientJob]) -> str | None:
    """Why these clients cannot train in one vectorised pass (``None``: they can)."""
    if len(jobs) < 2:
        return "one client"
    reason = settings_batch_reason(cfg, prox_mu)
    if reason is not None:
        return reason
    if any(len(job.client.labelled) < 2 for job in jobs):
        return "a client has fewer than 2 labelled pairs"
    if len({job.proto_label is None for job in jobs}) > 1:
        return "some clients have a prototype label and some do not"
    first = jobs[0].prior
    if isinstance(first, StandardNormalPrior):
        same = all(isinstance(job.prior, StandardNormalPrior) for job in jobs)
        return None if same else "the clients' priors differ"
    for job in jobs[1:]:
        other = job.prior
        if not (
            isinstance(other, FederatedMixturePrior)
            and other.tau == first.tau
            and other.estimator == first.estimator
            and other.num_samples == first.num_samples
            and torch.equal(other.comp_mu, first.comp_mu)
            and torch.equal(other.comp_var, first.comp_var)
        ):
            return "the clients' priors differ"
    if first.num_components == 0 or any(job.prior.num_components == 0 for job in jobs):
        return "a mixture prior without components"
    return None


class _MappedMixture:
    """A client's mixture prior inside the vectorised pass: shared components, the client's own
    logits (exclusion already applied). Duck-types ``Prior.kl``."""

    def __init__(self, template: FederatedMixturePrior, logits: torch.Tensor) -> None:
        self.template = template
        self.logits = logits

    def kl(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        training: bool = True,
        generator: torch.Generator | None = None,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        t = self.template
        return mixture_kl(
            mu,
            logvar,
            t.comp_mu,
            t.comp_var,
            self.logits,
            t.tau,
            t.estimator,
            noise or {},
            expanded=True,  # no [S, B, J, d] difference per client: matrix products
        )


def _pair_features(
    model: VariationalPreferenceModel, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``g`` on each of a client's padded pairs ``[n + 1, D]`` once: ``g(A)``, ``g(B)`` and the
    same features as chosen / rejected by the pair's label."""
    emb_a, emb_b, label = pairs
    g_a, g_b = model.feature(emb_a), model.feature(emb_b)
    a_pref = label.bool().unsqueeze(-1)
    return g_a, g_b, torch.where(a_pref, g_a, g_b), torch.where(a_pref, g_b, g_a)


class _Objective(nn.Module):
    """One client's step as a module's forward, so ``functional_call`` can swap in the client's
    slice of the weights: the pair feature ``g`` on each of the client's pairs once, then
    ``local_objective`` on the views gathered from those features (``train_local`` applies
    ``g`` to every view's copy of a pair: the same values, four to seven times the work)."""

    def __init__(self, model: VariationalPreferenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        prior: Prior,
        pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
        queries: tuple[torch.Tensor, torch.Tensor],
        labels: torch.Tensor | None,
        cfg: ModelConfig,
        **kwargs: object,
    ) -> object:
        g_a, g_b, chosen, rejected = _pair_features(self.model, pairs)
        label = pairs[2]
        (c_index, c_mask), (q_index, q_mask) = context, queries
        return local_objective(
            self.model,
            prior,
            ContextBatch(chosen[c_index], rejected[c_index], c_mask),
            QueryBatch(g_a[q_index], g_b[q_index], label[q_index], q_mask),
            labels,
            cfg,
            featurised=True,
            validate=False,
            fused_encoder=True,  # both orientations in one encoder call
            **kwargs,  # type: ignore[arg-type]
        )


class _PosteriorReader(nn.Module):
    """``q(z | C)`` of one client for several context subsets (``[S, K]`` rows of its pairs):
    ``moment_matched_posterior``'s read, mapped over clients like ``_Objective``."""

    def __init__(self, model: VariationalPreferenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, chosen, rejected = _pair_features(self.model, pairs)
        index, mask = context
        oriented = chosen[index] - rejected[index]
        return self.model.encode(oriented, mask, validate=False, fused=True)


class _Store:
    """Every client's labelled pairs padded to the largest client, with zero rows from index
    ``n_c`` on, which padded view positions gather (``ClientViews`` for C clients)."""

    def __init__(self, clients: Sequence[ClientTensors]) -> None:
        self.pad = max(len(c.labelled) for c in clients)
        first = clients[0].labelled
        shape = (len(clients), self.pad + 1, first.emb_a.shape[1])
        self.emb_a = torch.zeros(shape, dtype=first.emb_a.dtype)
        self.emb_b = torch.zeros(shape, dtype=first.emb_a.dtype)
        self.label = torch.zeros(shape[:2], dtype=first.label.dtype)
        for i, client in enumerate(clients):
            pairs = client.labelled
            n = len(pairs)
            self.emb_a[i, :n], self.emb_b[i, :n], self.label[i, :n] = (
                pairs.emb_a,
                pairs.emb_b,
                pairs.label,
            )

    def index(self, sets: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[C, V, K]`` row index and mask for ``sets[c][v]`` (K the longest view of any
        client; padding gathers the zero row ``n_max``)."""
        sizes = torch.tensor([[len(s) for s in views] for views in sets])
        length = int(sizes.max())
        mask = torch.arange(length).view(1, 1, -1) < sizes.unsqueeze(-1)
        index = torch.full(mask.shape, self.pad, dtype=torch.long)
        index[mask] = torch.cat([s for views in sets for s in views])
        return index, mask


def _stack_noise(noises: list[StepNoise]) -> StepNoise:
    return StepNoise(
        torch.stack([n.z_eps for n in noises]),
        {key: torch.stack([n.prior[key] for n in noises]) for key in noises[0].prior},
    )


def train_local_batched(
    model: VariationalPreferenceModel,
    jobs: Sequence[ClientJob],
    cfg: ModelConfig,
    steps: int = 30,
    lr: float = 1e-3,
    batch_size: int = 4,
    latent_first_steps: int = 0,
    num_groups: int | None = None,
    optimiser_kind: str = "adam",
) -> list[BatchedResult]:
    """``train_local`` for every job, all starting from ``model``'s weights (left unchanged).

    The caller checks ``batch_reason`` first; the arguments mean what they mean there."""
    reason = batch_reason(cfg, 0.0, jobs)
    if reason is not None:
        raise ValueError(f"these clients cannot train as one batch: {reason}")
    count = len(jobs)
    gens = [torch.Generator().manual_seed(job.seed) for job in jobs]
    objective = _Objective(model)
    model.train()
    weights = {
        f"model.{name}": p.detach().unsqueeze(0).repeat(count, *([1] * p.dim()))
        for name, p in model.named_parameters()
    }
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, tensor in weights.items():
        tensor.requires_grad_(name.removeprefix("model.") in trainable)
    buffers = {f"model.{name}": b for name, b in model.named_buffers()}
    mixture = jobs[0].prior if isinstance(jobs[0].prior, FederatedMixturePrior) else None
    params = [t for t in weights.values() if t.requires_grad]
    pi = mask = None
    if mixture is not None:
        pi = torch.stack([job.prior.pi_logits.detach() for job in jobs]).requires_grad_(True)
        mask = torch.stack([job.prior.comp_mask for job in jobs])  # type: ignore[union-attr]
        params.append(pi)
    optimiser = make_optimiser(optimiser_kind, params, lr, fused=True)
    frozen = [
        t
        for name, t in weights.items()
        if t.requires_grad and not is_latent_parameter(name.removeprefix("model."))
    ]
    labels = None
    if jobs[0].proto_label is not None:
        labels = torch.tensor([[int(job.proto_label)] * batch_size for job in jobs])  # type: ignore[arg-type]
    store = _Store([job.client for job in jobs])
    sizes = [len(job.client.labelled) for job in jobs]  # `labelled` concatenates on each read

    def one_client(  # one client's step, mapped over the first dimension of every tensor
        w: dict[str, torch.Tensor],
        pi_c: torch.Tensor | None,
        mask_c: torch.Tensor | None,
        pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
        queries: tuple[torch.Tensor, torch.Tensor],
        z_eps: torch.Tensor,
        prior_noise: dict[str, torch.Tensor],
        labels_c: torch.Tensor | None,
        step: int,
    ) -> tuple[torch.Tensor, ...]:
        prior: object = StandardNormalPrior()
        if mixture is not None and pi_c is not None and mask_c is not None:
            prior = _MappedMixture(mixture, pi_c.masked_fill(~mask_c, float("-inf")))
        terms = functional_call(
            objective,
            (w, buffers),
            (prior, pairs, context, queries, labels_c, cfg),
            {
                "step": step,
                "num_groups": num_groups,
                "noise": StepNoise(z_eps, prior_noise),
                "points": points,
            },
        )
        read = () if terms.read_nll is None else (terms.read_nll,)
        return (
            terms.total,
            terms.nll,
            terms.kl,
            terms.orth_pull,
            terms.orth_norm,
            terms.accuracy,
            *read,
        )

    names = TERMS + (("read_nll",) if cfg.read_weight > 0 else ())
    # The read term's points, made before mapping (see prior_reading_points).
    points = prior_reading_points(cfg.latent_dim, cfg.prior_draws) if cfg.read_weight > 0 else None
    sums = torch.zeros(len(names), count, dtype=torch.float64)
    for p in frozen:
        p.requires_grad_(latent_first_steps <= 0)
    for step in range(steps):
        if step == latent_first_steps:
            for p in frozen:
                p.requires_grad_(True)
        sets_c, sets_q, noises = [], [], []
        for c, job in enumerate(jobs):
            splits = [split_context_query(sizes[c], gens[c]) for _ in range(batch_size)]
            sets_c.append([s for s, _ in splits])
            sets_q.append([q for _, q in splits])
            noises.append(draw_step_noise(cfg, job.prior, batch_size, True, gens[c]))
        noise = _stack_noise(noises)
        with_pi = 0 if pi is not None else None
        with_labels = 0 if labels is not None else None
        mapped = vmap(
            lambda *args, step=step: one_client(*args, step=step),
            in_dims=(0, with_pi, with_pi, 0, 0, 0, 0, 0, with_labels),
        )
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no batching rule
            terms = mapped(
                weights,
                pi,
                mask,
                (store.emb_a, store.emb_b, store.label),
                store.index(sets_c),
                store.index(sets_q),
                noise.z_eps,
                noise.prior,
                labels,
            )
        optimiser.zero_grad(set_to_none=True)
        terms[0].sum().backward()
        optimiser.step()
        with torch.no_grad():
            sums += torch.stack([t.detach().double() for t in terms])
    mu, logvar = _posteriors(model, weights, buffers, store, sizes, gens, cfg)
    results = []
    for c, job in enumerate(jobs):
        metrics = {key: float(sums[i, c]) / max(steps, 1) for i, key in enumerate(names)}
        result = LocalResult(*moment_match(mu[c], logvar[c]), job.client.num_examples, metrics)
        logits = pi[c].detach().clone() if pi is not None else None
        results.append(BatchedResult(_client_arrays(model, weights, c), result, logits))
    return results


def _posteriors(
    model: VariationalPreferenceModel,
    weights: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    store: _Store,
    sizes: list[int],
    gens: list[torch.Generator],
    cfg: ModelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's posterior ``(mu, logvar) [C, S, d]`` over ``cfg.posterior_subsamples``
    random context subsets of its pairs after training: ``moment_matched_posterior``'s subsets,
    drawn from each client's generator in its order, read in one mapped call."""
    subsets = [
        [split_context_query(n, gen)[0] for _ in range(cfg.posterior_subsamples)]
        for n, gen in zip(sizes, gens, strict=True)
    ]
    reader = _PosteriorReader(model)
    # In training mode on purpose: batch_reason rules out dropout, so both modes compute the
    # same here, and in eval mode without gradients MultiheadAttention takes its fused fast
    # path, which has no vmap batching rule (vmap would run it one client at a time).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        detached = {name: w.detach() for name, w in weights.items()}
        return vmap(lambda w, pairs, ctx: functional_call(reader, (w, buffers), (pairs, ctx)))(
            detached, (store.emb_a, store.emb_b, store.label), store.index(subsets)
        )


def _client_arrays(
    model: VariationalPreferenceModel, weights: dict[str, torch.Tensor], c: int
) -> dict[str, np.ndarray]:
    """Client ``c``'s trained weights as ``shared_state`` gives them (the template's buffers,
    which training does not change, for the rest)."""
    return {
        key: (weights[f"model.{key}"][c] if f"model.{key}" in weights else value)
        .detach()
        .cpu()
        .numpy()
        .copy()
        for key, value in model.state_dict().items()
    }
