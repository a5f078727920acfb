"""The local objective, the local training step and the latent diagnostics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_toy_clients

from fedvpa.errors import ConfigError
from fedvpa.model.config import ModelConfig
from fedvpa.model.diagnostics import (
    active_units,
    kl_per_dimension,
    latent_silhouette,
    moment_match,
)
from fedvpa.model.objective import (
    ClientViews,
    local_objective,
    pad_contexts,
    pad_queries,
    read_over_points,
)
from fedvpa.model.priors import (
    FederatedMixturePrior,
    StandardNormalPrior,
    kl_standard_normal,
    standard_normal_draws,
)
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.training.local import (
    VPLPredictor,
    infer_posterior,
    population_latent,
    split_context_query,
    train_local,
)


def small_cfg(**kw) -> ModelConfig:
    base = {"input_dim": 16, "hidden_dim": 24, "feature_dim": 16, "latent_dim": 8}
    return ModelConfig(**{**base, "selector_hidden": 16, **kw})


def _batch(seed: int = 0):
    clients = make_toy_clients(4, 16, 16, seed=seed)
    contexts = [c.labelled.subset(torch.arange(6)) for c in clients]
    queries = [c.labelled.subset(torch.arange(6, 12)) for c in clients]
    return contexts, queries


def test_objective_terms_add_up() -> None:
    cfg = small_cfg(beta=0.3, ortho_lambda=0.5, ortho_gamma=0.2)
    model = VariationalPreferenceModel(cfg, seed=0)
    contexts, queries = _batch()
    labels = torch.tensor([0, 1, 0, 1])
    terms = local_objective(
        model,
        StandardNormalPrior(),
        pad_contexts(contexts),
        queries,
        labels,
        cfg,
        torch.Generator().manual_seed(0),
    )
    expected = terms.nll + 0.3 * terms.kl + 0.5 * terms.orth_pull + 0.2 * terms.orth_norm
    torch.testing.assert_close(terms.total.detach(), expected)
    torch.testing.assert_close(terms.kl, kl_standard_normal(terms.mu, terms.logvar).mean())
    assert float(terms.orth_pull) > 0 and 0.0 <= float(terms.accuracy) <= 1.0
    no_ortho = local_objective(
        model, StandardNormalPrior(), pad_contexts(contexts), queries, None, cfg
    )
    assert float(no_ortho.orth_pull) == 0.0 and float(no_ortho.orth_norm) == 0.0


def test_pull_on_mu_is_the_distance_of_the_mean_and_z_adds_the_variance() -> None:
    contexts, queries = _batch()
    labels = torch.tensor([0, 1, 0, 1])
    pulls = {}
    for target in ("mu", "z"):
        cfg = small_cfg(pull_on=target, z_samples=4000)
        model = VariationalPreferenceModel(cfg, seed=0)
        terms = local_objective(
            model,
            StandardNormalPrior(),
            pad_contexts(contexts),
            queries,
            labels,
            cfg,
            torch.Generator().manual_seed(0),
        )
        protos = model.prototypes.weight.detach()[labels]
        pulls[target] = float(terms.orth_pull)
    closed = (terms.mu - protos).pow(2).sum(-1).mean()
    variance = terms.logvar.exp().sum(-1).mean()
    assert pulls["mu"] == pytest.approx(float(closed), rel=1e-5)
    # E||z - p||^2 = ||mu - p||^2 + sum sigma^2 (Monte Carlo over 4000 samples)
    assert pulls["z"] == pytest.approx(float(closed + variance), rel=0.03)


def test_no_label_leakage_flipping_query_labels_leaves_z_unchanged() -> None:
    cfg = small_cfg()
    model = VariationalPreferenceModel(cfg, seed=0)
    contexts, queries = _batch(1)
    flipped = [dataclasses.replace(q, label=1.0 - q.label) for q in queries]
    runs = []
    for qs in (queries, flipped):
        runs.append(
            local_objective(
                model,
                StandardNormalPrior(),
                pad_contexts(contexts),
                qs,
                None,
                cfg,
                torch.Generator().manual_seed(5),
            )
        )
    assert torch.equal(runs[0].mu, runs[1].mu) and torch.equal(runs[0].logvar, runs[1].logvar)
    # The likelihood does read the query labels: the NLL changes, accuracies are complementary.
    assert float(runs[0].nll) != float(runs[1].nll)
    assert float(runs[0].accuracy + runs[1].accuracy) == pytest.approx(1.0)


def test_predictor_never_reads_test_labels() -> None:
    model = VariationalPreferenceModel(small_cfg(), seed=0)
    client = make_toy_clients(2, 16, 16, seed=2, num_unseen=1)[1]
    predictor = VPLPredictor(model)
    before = predictor.prob_a_preferred(client, client.test)
    flipped_test = dataclasses.replace(client.test, label=1.0 - client.test.label)
    changed = dataclasses.replace(client, test=flipped_test)
    torch.testing.assert_close(predictor.prob_a_preferred(changed, changed.test), before)
    # Unseen clients read only their context; seen clients read context + train.
    mu_ctx, _ = infer_posterior(model, client.context)
    torch.testing.assert_close(infer_posterior(model, client)[0], mu_ctx)


def test_context_query_splits_are_disjoint_and_cover() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(200):
        ctx, qry = split_context_query(7, gen)
        assert len(ctx) >= 1 and len(qry) >= 1
        assert sorted(torch.cat([ctx, qry]).tolist()) == list(range(7))
        sizes.add(len(ctx))
    assert sizes == set(range(1, 7))
    with pytest.raises(ValueError):
        split_context_query(1, gen)


def test_train_local_is_deterministic_and_learns_pi() -> None:
    cfg = small_cfg(prior="mixture")
    client = make_toy_clients(1, 16, 16, seed=3)[0]
    results = []
    for _ in range(2):
        model = VariationalPreferenceModel(cfg, seed=0)
        prior = FederatedMixturePrior(
            torch.randn(3, 8, generator=torch.Generator().manual_seed(1)),
            torch.ones(3, 8),
            torch.tensor([4.0, 8.0, 12.0]),
        )
        start = prior.pi_logits.detach().clone()
        result = train_local(model, prior, client, 1, cfg, steps=5, lr=1e-2, seed=7)
        results.append((result, model.shared_state(), prior.pi_logits.detach().clone()))
        assert not torch.equal(prior.pi_logits.detach(), start)
    (r1, s1, p1), (r2, s2, p2) = results
    assert torch.equal(r1.mu_bar, r2.mu_bar) and torch.equal(p1, p2)
    assert all((s1[k] == s2[k]).all() for k in s1)
    assert r1.mu_bar.shape == (8,) and r1.sigma2_bar.shape == (8,)
    assert bool((r1.sigma2_bar > 0).all()) and r1.num_examples == 12
    assert {"loss", "nll", "kl", "orth_pull", "orth_norm", "accuracy"} <= set(r1.metrics)


def test_train_local_reduces_the_loss_on_toy_data() -> None:
    cfg = small_cfg(use_ortho=False)
    client = make_toy_clients(1, 32, 16, seed=4, num_test=4, num_context=4)[0]
    model = VariationalPreferenceModel(cfg, seed=0)
    first = train_local(model, StandardNormalPrior(), client, None, cfg, steps=5, lr=3e-3, seed=1)
    for r in range(6):
        last = train_local(
            model, StandardNormalPrior(), client, None, cfg, steps=10, lr=3e-3, seed=2 + r
        )
    assert last.metrics["nll"] < first.metrics["nll"] - 0.05


def test_moment_match_closed_form() -> None:
    mu = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    logvar = torch.log(torch.tensor([[1.0, 0.5], [3.0, 0.5]]))
    mu_bar, s2 = moment_match(mu, logvar)
    torch.testing.assert_close(mu_bar, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(s2, torch.tensor([2.0 + 1.0, 0.5]))


def test_active_units_kl_per_dim_and_silhouette() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.zeros(20, 4)
    mu[:, 0] = torch.randn(20, generator=gen)  # informative
    mu[:, 1] = 0.01 * torch.randn(20, generator=gen)  # collapsed
    assert active_units(mu) == 1
    kl = kl_per_dimension(mu, torch.zeros(20, 4))
    assert float(kl[0]) > 0.1 and float(kl[2]) == 0.0
    types = [0] * 10 + [1] * 10
    separated = torch.cat([torch.full((10, 2), -3.0), torch.full((10, 2), 3.0)])
    separated += 0.1 * torch.randn(20, 2, generator=gen)
    assert latent_silhouette(separated, types) > 0.9
    assert abs(latent_silhouette(torch.randn(20, 2, generator=gen), types)) < 0.3
    assert latent_silhouette(separated, [0] * 20) != latent_silhouette(separated, [0] * 20)


def test_client_views_gather_what_padding_the_subsets_gives() -> None:
    """The local steps gather views by index; they must equal the padded subsets exactly."""
    pairs = make_toy_clients(1, 16, 16, seed=3)[0].labelled
    views = ClientViews(pairs)
    gen = torch.Generator().manual_seed(0)
    splits = [split_context_query(len(pairs), gen) for _ in range(5)]
    expected_ctx = pad_contexts([pairs.subset(c) for c, _ in splits])
    expected_qry = pad_queries([pairs.subset(q) for _, q in splits])
    ctx = views.contexts([c for c, _ in splits])
    qry = views.queries([q for _, q in splits])
    for got, want in [
        (ctx.chosen, expected_ctx.chosen),
        (ctx.rejected, expected_ctx.rejected),
        (ctx.mask, expected_ctx.mask),
        (qry.emb_a, expected_qry.emb_a),
        (qry.emb_b, expected_qry.emb_b),
        (qry.label, expected_qry.label),
        (qry.mask, expected_qry.mask),
    ]:
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="at least one pair"):
        views.contexts([torch.arange(2), torch.zeros(0, dtype=torch.long)])


def _oriented(model: VariationalPreferenceModel, pairs) -> torch.Tensor:
    """``g(chosen) - g(rejected)`` of labelled pairs, ``[n, F]``."""
    pick = pairs.label[:, None] > 0.5
    chosen = torch.where(pick, pairs.emb_a, pairs.emb_b)
    rejected = torch.where(pick, pairs.emb_b, pairs.emb_a)
    return model.feature(chosen) - model.feature(rejected)


def test_read_over_points_is_the_prior_reading_of_evaluation() -> None:
    cfg = small_cfg(latent_dim=3)
    model = VariationalPreferenceModel(cfg, seed=0)
    with torch.no_grad():
        model.selector.bias.weight.mul_(4.0)  # an informative likelihood over z
    points = standard_normal_draws(3, 512)
    clients = make_toy_clients(3, 16, 16, seed=4)
    contexts = [
        c.labelled.subset(torch.arange(k)) for c, k in zip(clients, (3, 7, 12), strict=True)
    ]
    batch = torch.zeros(3, 12, cfg.feature_dim)
    mask = torch.zeros(3, 12)
    for i, pairs in enumerate(contexts):
        batch[i, : len(pairs)] = _oriented(model, pairs)
        mask[i, : len(pairs)] = 1.0
    read = read_over_points(model, batch, mask, points)
    for i, pairs in enumerate(contexts):  # padding changes nothing; evaluation's own function
        expected = population_latent(model, pairs, points, torch.ones(len(points)))
        torch.testing.assert_close(read[i], expected, rtol=0, atol=1e-5)
    # Closed forms: one point is read as itself; an empty context (or a likelihood flat in z)
    # as the points' mean.
    one = read_over_points(model, batch, mask, points[:1])
    torch.testing.assert_close(one, points[:1].expand(3, 3))
    empty = read_over_points(model, batch, torch.zeros(3, 12), points)
    torch.testing.assert_close(empty, points.mean(0).expand(3, 3), rtol=0, atol=1e-6)


def test_read_term_adds_up_and_trains_the_selector_not_the_encoder() -> None:
    contexts, queries = _batch(2)
    base = small_cfg(prior_draws=256)
    read = small_cfg(prior_draws=256, read_weight=0.7)
    model = VariationalPreferenceModel(read, seed=0)
    args = (StandardNormalPrior(), pad_contexts(contexts), queries, None)
    off = local_objective(model, *args, base, torch.Generator().manual_seed(3))
    on = local_objective(model, *args, read, torch.Generator().manual_seed(3))
    assert off.read_nll is None and "read_nll" not in off.as_metrics()
    assert on.read_nll is not None and "read_nll" in on.as_metrics()
    torch.testing.assert_close(on.nll, off.nll)  # the same draws, the same encoder term
    torch.testing.assert_close(on.total.detach(), off.total.detach() + 0.7 * on.read_nll)
    # The read term by hand: BCE of the query labels at the z read from each context.
    points = standard_normal_draws(read.latent_dim, 256)
    by_hand = []
    for ctx, qry in zip(contexts, queries, strict=True):
        z = population_latent(model, ctx, points, torch.ones(256))
        logits = model.logit(qry.emb_a, qry.emb_b, z)
        by_hand.append(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, qry.label, reduction="sum")
        )
    torch.testing.assert_close(on.read_nll, torch.stack(by_hand).mean(), rtol=1e-5, atol=1e-5)
    # Its gradient reaches the selector (through the likelihood weights and the queries) and
    # the pair feature, never the encoder, which it does not read.
    grads = []
    for terms in (off, on):
        model.zero_grad()
        terms.total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    changed = {n for n in grads[0] if not torch.allclose(grads[0][n], grads[1][n], atol=1e-7)}
    assert {"selector.base.weight", "selector.bias.weight"} <= changed
    assert any(n.startswith("feature.") for n in changed)
    assert not any(n.startswith("encoder.") for n in changed)


def test_read_term_lowers_the_loss_of_the_reading() -> None:
    cfg = small_cfg(prior_draws=256, read_weight=1.0)
    model = VariationalPreferenceModel(cfg, seed=0)
    contexts, queries = _batch(3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    first = last = None
    for _ in range(60):
        terms = local_objective(
            model, StandardNormalPrior(), pad_contexts(contexts), queries, None, cfg, gen
        )
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        first = float(terms.read_nll) if first is None else first
        last = float(terms.read_nll)
    assert last < 0.5 * first


@pytest.mark.parametrize(
    ("kw", "needs"),
    [
        ({"read_weight": -0.1}, "non-negative"),
        ({"read_weight": 1.0, "prior": "mixture"}, "standard"),
        ({"read_weight": 1.0, "selector": "reward"}, "logit-bias"),
    ],
)
def test_read_weight_is_checked(kw, needs) -> None:
    with pytest.raises(ConfigError, match=needs) as err:
        small_cfg(**kw)
    assert err.value.field == "read_weight"
