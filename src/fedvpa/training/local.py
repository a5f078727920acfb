"""A client's local steps, its moment-matched posterior, and posterior inference at evaluation.

Each step draws a fresh random split of the client's labelled pairs into a context set (read by
the encoder) and a disjoint query set (scored by the selector), as in VPL, so the model learns
to predict pairs whose labels ``z`` has never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.model.config import ModelConfig
from fedvpa.model.diagnostics import moment_match
from fedvpa.model.objective import ClientViews, local_objective, pad_contexts
from fedvpa.model.priors import Prior
from fedvpa.model.vpl import VariationalPreferenceModel


@dataclass
class LocalResult:
    """What a client reports after its local steps (besides the shared weights in the model)."""

    mu_bar: torch.Tensor  # [d]
    sigma2_bar: torch.Tensor  # [d]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def make_optimiser(
    kind: str, params: list[torch.nn.Parameter], lr: float, fused: bool = False
) -> torch.optim.Optimizer:
    """A client's optimiser for one round ("adam" or "sgd"); its state never outlives the round.

    ``fused``: Adam's whole update as one kernel per tensor instead of a multi-tensor kernel per
    operation (the same update up to rounding). The batched local step uses it, where Adam
    updates ``[C, ...]`` stacks and its operations were a tenth of the step; the one-at-a-time
    step keeps ``foreach`` so that its results stay those of the published figures."""
    # foreach: one multi-tensor kernel per Adam operation instead of one Python-level loop over
    # the parameters (same arithmetic; a tenth of the optimiser's time on a model this small).
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if fused:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


def split_context_query(
    n: int, generator: torch.Generator, max_context: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random disjoint (context, query) index sets of ``range(n)``, both non-empty.

    The context size is uniform on ``1 .. n - 1`` (capped at ``max_context``) so the encoder sees
    every context size it will meet at evaluation.
    """
    if n < 2:
        raise ValueError(f"a context/query split needs at least 2 labelled pairs, got {n}")
    top = n - 1 if max_context is None else max(1, min(n - 1, max_context))
    k = int(torch.randint(1, top + 1, (1,), generator=generator))
    perm = torch.randperm(n, generator=generator)
    return perm[:k], perm[k:]


def posterior_of(
    model: VariationalPreferenceModel, pairs: PairTensors
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, logvar) [d]`` of ``q(z | pairs)``."""
    ctx = pad_contexts([pairs])
    mu, logvar = model.posterior(ctx.chosen, ctx.rejected, ctx.mask)
    return mu[0], logvar[0]


def context_pairs(client: ClientTensors) -> PairTensors:
    """The labelled pairs a posterior may read at evaluation: never the test pairs.

    Seen clients use context + train (they trained on them anyway); unseen clients only the
    few context pairs they revealed.
    """
    return client.context if client.unseen else client.labelled


def infer_posterior(
    model: VariationalPreferenceModel, client_or_pairs: ClientTensors | PairTensors
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of a client at evaluation (no parameter update); ``N(0, I)`` with no pairs."""
    pairs = (
        context_pairs(client_or_pairs)
        if isinstance(client_or_pairs, ClientTensors)
        else client_or_pairs
    )
    d = model.cfg.latent_dim
    if len(pairs) == 0:
        return torch.zeros(d), torch.zeros(d)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return posterior_of(model, pairs)
    finally:
        model.train(was_training)


class VPLPredictor:
    """Predictor for the latent model: ``z = mu(C)`` from the client's labelled pairs."""

    def __init__(self, model: VariationalPreferenceModel, z_override: torch.Tensor | None = None):
        self.model = model
        self.z_override = z_override
        # The last client's z: scoring its test pairs and then its conflict pairs reads the
        # same posterior twice (deterministic at evaluation). Held with the client object
        # itself, so an id reused by another object cannot match.
        self._last: tuple[ClientTensors, torch.Tensor] | None = None

    def latent(self, client: ClientTensors) -> torch.Tensor:
        if self.z_override is not None:
            return self.z_override
        if self._last is None or self._last[0] is not client:
            self._last = (client, self._infer(client))
        return self._last[1]

    def _infer(self, client: ClientTensors) -> torch.Tensor:
        """A client's ``z`` (uncached): the encoder's posterior mean."""
        return infer_posterior(self.model, client)[0]

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        z = self.latent(client)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return torch.sigmoid(self.model.logit(pairs.emb_a, pairs.emb_b, z))
        finally:
            self.model.train(was_training)


def population_latent(
    model: VariationalPreferenceModel,
    pairs: PairTensors,
    population_mu: torch.Tensor,
    population_n: torch.Tensor,
) -> torch.Tensor:
    """Posterior mean of ``z`` when the prior is a population of point masses.

    The prior puts weight ``n_j`` on each of the ``J`` points ``population_mu [J, d]`` (the
    clients' latest posterior means); the client's labelled ``pairs`` weigh each point by the
    selector's likelihood of its choices there. The result is the posterior-weighted mean of
    the points: with few pairs it stays near where the population is dense, with many it moves
    to the point whose preference fits the choices. No pairs give the prior mean.
    """
    log_w = torch.log(population_n.clamp_min(1e-12))
    if len(pairs) > 0:
        logits = model.logit_grid(pairs.emb_a, pairs.emb_b, population_mu)  # [J, n]
        labels = pairs.label.expand_as(logits)
        log_w = log_w - F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
    return torch.softmax(log_w, dim=0) @ population_mu


class PopulationPredictor(VPLPredictor):
    """``VPLPredictor`` whose ``z`` is ``population_latent`` of the client's labelled pairs
    (seen) or context pairs (unseen) instead of the encoder's posterior mean."""

    def __init__(
        self,
        model: VariationalPreferenceModel,
        population_mu: torch.Tensor,
        population_n: torch.Tensor,
    ):
        super().__init__(model)
        self.population_mu = population_mu.to(torch.float32)
        self.population_n = population_n.to(torch.float32)

    def _infer(self, client: ClientTensors) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return population_latent(
                    self.model, context_pairs(client), self.population_mu, self.population_n
                )
        finally:
            self.model.train(was_training)


def moment_matched_posterior(
    model: VariationalPreferenceModel,
    pairs: PairTensors,
    num_subsets: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment-matched posterior over random context subsets (sizes as in training)."""
    n = len(pairs)
    contexts = []
    for _ in range(num_subsets):
        if n >= 2:
            ctx, _ = split_context_query(n, generator)
            contexts.append(pairs.subset(ctx))
        else:
            contexts.append(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = pad_contexts(contexts)
            mu, logvar = model.posterior(batch.chosen, batch.rejected, batch.mask)
    finally:
        model.train(was_training)
    return moment_match(mu, logvar)


def is_latent_parameter(name: str) -> bool:
    """Parameters of the pathway from a client's context to its preference: the set encoder and
    the z-dependent part of the selector (``W`` of the logit-bias form; the whole reward MLP,
    which reads ``z``, in the VPL form)."""
    return name.startswith(("encoder.", "selector.bias.", "selector.reward."))


@contextmanager
def _frozen(params: list[torch.nn.Parameter], active: bool) -> Iterator[Callable[[], None]]:
    """Turn off gradients of ``params`` until the returned ``thaw`` is called (or the block
    ends). A frozen weight then gets no gradient at all, so Adam skips it (no update, no moment),
    and autograd does not compute the gradients nobody would use (during the latent-first
    steps: the pair feature ``g``'s weight gradient over every input embedding of the step)."""
    states = [p.requires_grad for p in params]

    def thaw() -> None:
        for p, state in zip(params, states, strict=True):
            p.requires_grad_(state)

    if active:
        for p in params:
            p.requires_grad_(False)
    try:
        yield thaw
    finally:
        thaw()


def train_local(
    model: VariationalPreferenceModel,
    prior: Prior,
    client: ClientTensors,
    proto_label: int | None,
    cfg: ModelConfig,
    steps: int = 30,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    latent_first_steps: int = 0,
    prox_mu: float = 0.0,
    num_groups: int | None = None,
    optimiser_kind: str = "adam",
) -> LocalResult:
    """Local steps of one client on its own labelled pairs; updates ``model`` and ``prior``.

    The first ``latent_first_steps`` steps update only the latent pathway (set encoder and the
    z-dependent part of the selector). A client holds one user type, so plain local steps fit its
    preference through the shared base weights within a few steps, which FedAvg then cancels
    between types; frozen base weights make the client's preference flow through ``z`` instead,
    where updates from the two types add up (FedRep-style ordering, personal part first).

    ``batch_size`` independent context/query splits of the client form each step's batch (lower
    gradient variance with the same data). The Adam state is created here, fresh each round.
    ``prox_mu > 0`` adds FedProx's ``mu/2 ||w - w_global||^2`` on the shared weights, which keeps
    a client that fits its few pairs quickly from drifting far from the round's global model.
    """
    labelled = client.labelled
    n = len(labelled)
    if n < 2:
        raise ValueError(
            f"client {client.client_id} has {n} labelled pairs; local training needs 2"
        )
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [p for p in prior.parameters() if p.requires_grad and p.numel() > 0]
    optimiser = make_optimiser(optimiser_kind, params, lr)
    frozen = [p for name, p in model.named_parameters() if not is_latent_parameter(name)]
    anchor = [(p, p.detach().clone()) for p in model.parameters()] if prox_mu > 0 else []
    labels = None
    if proto_label is not None:
        labels = torch.full((batch_size,), int(proto_label), dtype=torch.long)
    views = ClientViews(labelled)
    sums: dict[str, float] = {}
    model.train()
    with torch.random.fork_rng(devices=[]), _frozen(frozen, latent_first_steps > 0) as thaw:
        torch.manual_seed(seed)  # dropout, if any
        for step in range(steps):
            if step == latent_first_steps:
                thaw()
            splits = [split_context_query(n, gen) for _ in range(batch_size)]
            context = views.contexts([c for c, _ in splits])
            queries = views.queries([q for _, q in splits])
            terms = local_objective(
                model, prior, context, queries, labels, cfg, gen, step, num_groups
            )
            loss = terms.total
            if anchor:
                loss = loss + 0.5 * prox_mu * sum(((p - p0) ** 2).sum() for p, p0 in anchor)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for key, value in terms.as_metrics().items():
                sums[key] = sums.get(key, 0.0) + value
    metrics = {key: value / max(steps, 1) for key, value in sums.items()}
    mu_bar, sigma2_bar = moment_matched_posterior(model, labelled, cfg.posterior_subsamples, gen)
    return LocalResult(mu_bar.detach(), sigma2_bar.detach(), client.num_examples, metrics)
