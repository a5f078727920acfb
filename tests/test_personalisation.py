"""Issue 10's model pieces: the Laplace encoder, a linear pair feature, automatic group count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvpa.errors import ConfigError
from fedvpa.methods.posterior_store import update_store
from fedvpa.methods.variational import make_variant
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import PairFeature, laplace_posterior
from fedvpa.model.prototypes import OrthogonalPrototypes, choose_num_groups
from fedvpa.model.vpl import VariationalPreferenceModel
from tests.helpers import make_toy_clients
from tests.method_loop import run_in_process


def _map_by_gradient_ascent(oriented, base, coupling, prior_var, iters=4000):
    z = torch.zeros(coupling.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        logits = oriented @ base + (oriented @ coupling) @ z
        loss = -torch.nn.functional.logsigmoid(logits).sum() + 0.5 * (z @ z) / prior_var
        loss.backward()
        return loss

    opt.step(closure)
    return z.detach()


def test_laplace_mode_is_the_map_of_the_logistic_posterior() -> None:
    gen = torch.Generator().manual_seed(0)
    oriented = torch.randn(1, 6, 5, generator=gen, dtype=torch.float64)
    base = torch.randn(5, generator=gen, dtype=torch.float64)
    coupling = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)
    mu, logvar = laplace_posterior(oriented, mask, base, coupling, prior_var=2.0, steps=400)
    expected = _map_by_gradient_ascent(oriented[0], base, coupling, prior_var=2.0)
    torch.testing.assert_close(mu[0], expected, atol=1e-5, rtol=0)
    # Covariance = inverse Hessian at the mode, diagonal kept.
    p = torch.sigmoid(oriented[0] @ base + (oriented[0] @ coupling) @ mu[0])
    b = oriented[0] @ coupling
    hessian = torch.eye(3, dtype=torch.float64) / 2.0 + (b.T * (p * (1 - p))) @ b
    torch.testing.assert_close(logvar[0].exp(), torch.linalg.inv(hessian).diagonal())


def test_laplace_with_no_evidence_is_the_prior_and_padding_is_ignored() -> None:
    oriented = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    zero = torch.zeros(5, 3)
    mu, logvar = laplace_posterior(oriented, mask, torch.randn(5), zero, prior_var=1.0)
    torch.testing.assert_close(mu, torch.zeros(2, 3))
    torch.testing.assert_close(logvar, torch.zeros(2, 3))
    coupling = torch.randn(5, 3)
    base = torch.randn(5)
    padded, _ = laplace_posterior(oriented[:1], mask[:1], base, coupling)
    alone, _ = laplace_posterior(oriented[:1, :2], mask[:1, :2], base, coupling)
    torch.testing.assert_close(padded, alone)


def test_each_laplace_step_lowers_the_negative_log_posterior() -> None:
    gen = torch.Generator().manual_seed(0)
    oriented = torch.randn(1, 6, 5, generator=gen, dtype=torch.float64) * 3
    base = torch.randn(5, generator=gen, dtype=torch.float64)
    coupling = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, 6, dtype=torch.bool)

    def objective(z: torch.Tensor) -> float:
        logits = oriented[0] @ base + (oriented[0] @ coupling) @ z
        return float(-torch.nn.functional.logsigmoid(logits).sum() + 0.5 * z @ z)

    values = [
        objective(laplace_posterior(oriented, mask, base, coupling, steps=s)[0][0])
        for s in range(8)
    ]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:], strict=False))


def test_laplace_posterior_tightens_with_more_evidence_and_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(1)
    pair = torch.randn(1, 1, 4, generator=gen)
    coupling = torch.randn(4, 2, generator=gen, requires_grad=True)
    base = torch.zeros(4)
    few = laplace_posterior(pair, torch.ones(1, 1, dtype=torch.bool), base, coupling)[1]
    many_pairs = pair.expand(1, 8, 4)
    many = laplace_posterior(many_pairs, torch.ones(1, 8, dtype=torch.bool), base, coupling)
    assert bool((many[1] <= few + 1e-6).all())
    many[0].sum().backward()
    assert coupling.grad is not None and bool(coupling.grad.abs().sum() > 0)


def test_model_with_laplace_encoder_has_no_encoder_weights() -> None:
    cfg = ModelConfig(input_dim=8, encoder="laplace", latent_dim=4, num_prototypes=2)
    model = VariationalPreferenceModel(cfg)
    assert not any(k.startswith("encoder.") for k in model.shared_state())
    ctx = torch.randn(3, 5, 8)
    mu, logvar = model.posterior(ctx, torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
    assert mu.shape == logvar.shape == (3, 4)
    with pytest.raises(ConfigError, match="encoder"):
        ModelConfig(encoder="laplace", selector="reward")


def test_linear_pair_feature_is_antisymmetric_and_linear() -> None:
    g = PairFeature(6, 10, 3, layers=1)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(g.pair(a, b), -g.pair(b, a))
    torch.testing.assert_close(g.pair(a, b), g(a - b))
    with pytest.raises(ConfigError, match="feature_layers"):
        ModelConfig(feature_layers=3)


def test_choose_num_groups_finds_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3, 4, 6):
        centres = rng.normal(size=(k, 8)) * 10
        points = np.concatenate([c + rng.normal(size=(12, 8)) for c in centres])
        chosen, scores = choose_num_groups(points, 8, seed=0)
        assert chosen == k, scores
    assert choose_num_groups(np.zeros((2, 3)), 8) == (2, {})
    with pytest.raises(ConfigError):
        choose_num_groups(np.zeros((5, 2)), 1)


def test_orthonormality_and_nearest_only_use_active_prototypes() -> None:
    protos = OrthogonalPrototypes(4, 6, radius=2.0, seed=0)
    with torch.no_grad():
        protos.weight[3] *= 3.0  # an unused row out of shape does not count
    assert float(protos.orthonormality_loss(3).detach()) < 1e-6
    assert float(protos.orthonormality_loss().detach()) > 1.0
    z = protos.weight.detach()[3:4] * 1.0
    assert int(protos.nearest(z, 3)[0]) in (0, 1, 2)


def test_update_store_keeps_the_latest_mean_per_client() -> None:
    extra = {"store_ids": np.array([1, 5]), "store_mu": np.array([[1.0], [5.0]], np.float32)}
    out = update_store(extra, np.array([5, 2]), np.array([[50.0], [2.0]], np.float32))
    assert out["store_ids"].tolist() == [1, 2, 5]
    assert out["store_mu"][:, 0].tolist() == [1.0, 2.0, 50.0]


def test_auto_groups_are_chosen_once_at_the_first_pull_round_and_recorded() -> None:
    clients = make_toy_clients(num_clients=16, pairs=12, dim=8, seed=0)
    model = {
        "input_dim": 8,
        "latent_dim": 4,
        "max_groups": 4,
        "ortho_warmup_rounds": 2,
        "prior_warmup_rounds": 2,
    }
    method = make_variant("fedvpa-gp", model, {"local_steps": 3, "latent_first_steps": 1})
    assert method.cfg.num_prototypes == "auto"
    state, _, _ = run_in_process(method, clients, rounds=4, per_round=8)
    k = method.round_info(state)["num_groups"]
    assert 2 <= k <= 4
    assert state.info["num_groups"] == k and state.info["group_scores"]
    assert len(state.extra["store_ids"]) >= 8
    fixed = make_variant("fedvpa-gp", {**model, "num_prototypes": 3}, {"local_steps": 3})
    assert fixed.round_info(fixed.init_server_state(0)) == {"num_groups": 3}
    assert make_variant("fedvpl", model).round_info(fixed.init_server_state(0)) == {}


@pytest.mark.parametrize("encoder", ["attention", "mean"])
def test_odd_encoder_reverses_z_when_every_choice_is_reversed(encoder: str) -> None:
    cfg = ModelConfig(input_dim=8, latent_dim=4, encoder=encoder, odd_encoder=True)
    model = VariationalPreferenceModel(cfg, seed=1)
    chosen, rejected = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mu, logvar = model.posterior(chosen, rejected, mask)
    mu_rev, logvar_rev = model.posterior(rejected, chosen, mask)
    torch.testing.assert_close(mu_rev, -mu)
    torch.testing.assert_close(logvar_rev, logvar)
    # No constant output: a context whose pairs are ties (chosen == rejected) gives z = 0.
    tie, _ = model.posterior(chosen, chosen, mask)
    torch.testing.assert_close(tie, torch.zeros_like(tie))
    plain_cfg = ModelConfig(input_dim=8, latent_dim=4, encoder=encoder, odd_encoder=False)
    plain = VariationalPreferenceModel(plain_cfg)
    assert not torch.allclose(plain.posterior(chosen, chosen, mask)[0], torch.zeros(3, 4))


def test_mixture_prior_keeps_each_clients_latest_posterior_for_max_age_rounds() -> None:
    from fedvpa.methods.posterior_store import merge_components

    def comps(ids: list[int], value: float, rnd: int) -> dict[str, np.ndarray]:
        n = len(ids)
        return {
            "prior_ids": np.array(ids, np.int64),
            "prior_mu": np.full((n, 2), value, np.float32),
            "prior_var": np.ones((n, 2), np.float32),
            "prior_n": np.full(n, 4.0, np.float32),
            "prior_round": np.full(n, rnd, np.int64),
        }

    store = merge_components({}, comps([3, 1], 1.0, 1), oldest_round=-9)
    store = merge_components(store, comps([3, 7], 2.0, 2), oldest_round=-8)
    assert store["prior_ids"].tolist() == [1, 3, 7]
    assert store["prior_mu"][:, 0].tolist() == [1.0, 2.0, 2.0]  # client 3's latest wins
    aged = merge_components(store, comps([9], 5.0, 12), oldest_round=1)  # round 1 is too old
    assert aged["prior_ids"].tolist() == [3, 7, 9]
    assert aged["prior_round"].tolist() == [2, 2, 12]


def test_paper_prior_is_last_round_only() -> None:
    clients = make_toy_clients(num_clients=12, pairs=10, dim=8, seed=0)
    model = {"input_dim": 8, "latent_dim": 4, "prior_warmup_rounds": 1, "ortho_warmup_rounds": 1}
    local = {"local_steps": 2, "latent_first_steps": 1}
    paper = make_variant("fedvpl+gp", {**model, "prior_max_age": 1}, local)
    state, _, _ = run_in_process(paper, clients, rounds=3, per_round=4)
    assert len(state.extra["prior_ids"]) == 4
    population = make_variant("fedvpl+gp", model, local)
    state, _, _ = run_in_process(population, clients, rounds=3, per_round=4)
    assert len(state.extra["prior_ids"]) > 4


def test_auto_groups_need_two_latent_dimensions() -> None:
    with pytest.raises(ConfigError, match="num_prototypes"):
        ModelConfig(latent_dim=1)
    assert ModelConfig(latent_dim=1, num_prototypes=1).prototype_rows == 1
    assert ModelConfig(latent_dim=3).prototype_rows == 3  # auto: at most latent_dim rows
