"""Closed forms and estimators of the priors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fedvpa.errors import ConfigError
from fedvpa.model.priors import (
    FederatedMixturePrior,
    StandardNormalPrior,
    gumbel_softmax_weights,
    kl_gaussians,
    kl_standard_normal,
    log_normal_diag,
    mixture_kl_monte_carlo,
    mixture_kl_upper_bound,
)


def _random_gaussians(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=gen), 0.5 * torch.randn(b, d, generator=gen)


def test_kl_standard_normal_matches_torch_distributions() -> None:
    mu, logvar = _random_gaussians(5, 7, 0)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    torch.testing.assert_close(
        StandardNormalPrior().kl(mu, logvar), expected, msg="prior class disagrees"
    )


def test_kl_gaussians_matches_torch_and_is_zero_on_itself() -> None:
    mu_q, lv_q = _random_gaussians(4, 6, 1)
    mu_p, lv_p = _random_gaussians(4, 6, 2)
    expected = kl_divergence(
        Normal(mu_q, torch.exp(0.5 * lv_q)), Normal(mu_p, torch.exp(0.5 * lv_p))
    ).sum(-1)
    torch.testing.assert_close(kl_gaussians(mu_q, lv_q.exp(), mu_p, lv_p.exp()), expected)
    torch.testing.assert_close(
        kl_gaussians(mu_q, lv_q.exp(), mu_q, lv_q.exp()), torch.zeros(4), atol=1e-6, rtol=0
    )


def test_log_normal_diag_matches_torch() -> None:
    mu, logvar = _random_gaussians(3, 5, 3)
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar.exp()), expected)


def test_mc_mixture_kl_with_one_component_matches_closed_form() -> None:
    mu, logvar = _random_gaussians(6, 4, 5)
    comp_mu, comp_lv = _random_gaussians(1, 4, 6)
    exact = kl_gaussians(mu, logvar.exp(), comp_mu, comp_lv.exp())
    gen = torch.Generator().manual_seed(7)
    estimate = mixture_kl_monte_carlo(
        mu, logvar, comp_mu, comp_lv.exp(), torch.zeros(1), num_samples=20000, generator=gen
    )
    # Standard error of the MC mean with 20k samples is well below 0.1 nats for these scales.
    assert torch.allclose(estimate, exact, atol=0.15, rtol=0.02), (estimate, exact)


def test_upper_bound_dominates_mc_estimate_on_average() -> None:
    mu, logvar = _random_gaussians(8, 4, 8)
    comp_mu, comp_lv = _random_gaussians(3, 4, 9)
    comp_mu = comp_mu * 2.0
    w = torch.tensor([0.5, 0.3, 0.2])
    bound = mixture_kl_upper_bound(mu, logvar, comp_mu, comp_lv.exp(), w)
    gen = torch.Generator().manual_seed(10)
    mc = mixture_kl_monte_carlo(mu, logvar, comp_mu, comp_lv.exp(), w.log(), 5000, gen)
    assert float(bound.mean()) >= float(mc.mean())
    assert float((bound - mc).min()) > -0.1  # per client too, up to MC error
    # The gap is real (not an identity): the components are far apart.
    assert float((bound - mc).mean()) > 0.1


def test_gumbel_softmax_becomes_one_hot_as_tau_goes_to_zero() -> None:
    logits = torch.tensor([0.1, 1.3, -0.4, 0.9])
    w_cold = gumbel_softmax_weights(logits, tau=1e-3, noise=False)
    torch.testing.assert_close(w_cold, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    noisy = gumbel_softmax_weights(logits.expand(100, 4), tau=1e-3, generator=gen)
    assert float((noisy.max(dim=-1).values > 0.999).float().mean()) >= 0.95
    warm = gumbel_softmax_weights(logits.expand(100, 4), tau=1.0, generator=gen)
    assert float((warm.max(dim=-1).values > 0.999).float().mean()) == 0.0
    # At tau = 1 without noise the weights are the plain softmax.
    torch.testing.assert_close(
        gumbel_softmax_weights(logits, 1.0, noise=False), torch.softmax(logits, -1)
    )
    # Noise changes the weights during training.
    assert not torch.allclose(noisy[0], noisy[1]) or not torch.allclose(noisy[0], noisy[2])


def _mixture(estimator: str, **kw) -> FederatedMixturePrior:
    comp_mu, comp_lv = _random_gaussians(3, 4, 11)
    return FederatedMixturePrior(
        comp_mu, comp_lv.exp(), torch.tensor([10.0, 20.0, 30.0]), estimator=estimator, **kw
    )


@pytest.mark.parametrize("estimator", ["mc", "upper-bound"])
def test_gradients_reach_pi_and_posterior(estimator: str) -> None:
    prior = _mixture(estimator)
    torch.testing.assert_close(prior.pi_logits.detach(), torch.tensor([1.0, 2.0, 3.0]).div(6).log())
    mu, logvar = _random_gaussians(2, 4, 12)
    mu.requires_grad_(True)
    kl = prior.kl(mu, logvar, training=True, generator=torch.Generator().manual_seed(0))
    kl.sum().backward()
    assert prior.pi_logits.grad is not None and float(prior.pi_logits.grad.abs().sum()) > 0
    assert mu.grad is not None and float(mu.grad.abs().sum()) > 0


def test_mixture_prior_without_components_is_standard_normal() -> None:
    prior = FederatedMixturePrior(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0))
    mu, logvar = _random_gaussians(3, 4, 13)
    torch.testing.assert_close(prior.kl(mu, logvar), kl_standard_normal(mu, logvar))
    # Excluding the only component falls back to N(0, I) too.
    single = FederatedMixturePrior(torch.ones(1, 4), torch.ones(1, 4), torch.ones(1), exclude=0)
    torch.testing.assert_close(single.kl(mu, logvar), kl_standard_normal(mu, logvar))


def test_excluded_component_has_no_weight() -> None:
    prior = _mixture("upper-bound", exclude=1)
    w = prior.weights(training=True, generator=torch.Generator().manual_seed(1)).detach()
    assert float(w[1]) == 0.0 and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    mu, logvar = _random_gaussians(2, 4, 14)
    mc = _mixture("mc", exclude=1, num_samples=4)
    assert torch.isfinite(mc.kl(mu, logvar, generator=torch.Generator().manual_seed(2))).all()


def test_eval_kl_is_deterministic_without_noise_for_upper_bound() -> None:
    prior = _mixture("upper-bound")
    mu, logvar = _random_gaussians(2, 4, 15)
    a = prior.kl(mu, logvar, training=False)
    b = prior.kl(mu, logvar, training=False)
    torch.testing.assert_close(a, b)


def test_bad_prior_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        FederatedMixturePrior(torch.zeros(2, 4), torch.ones(3, 4), torch.ones(2))
    with pytest.raises(ConfigError):
        _mixture("exact")
    with pytest.raises(ConfigError):
        gumbel_softmax_weights(torch.zeros(3), tau=0.0)


def test_component_densities_by_matrix_products_match_the_difference_form() -> None:
    """``log_normal_diag_components`` (the batched local step's form) against
    ``log_normal_diag`` on the explicit ``[..., J, d]`` difference, values and gradients."""
    from fedvpa.model.priors import log_normal_diag, log_normal_diag_components

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    var = torch.rand(50, 6, generator=gen, dtype=torch.float64) + 0.1
    direct = log_normal_diag(z.unsqueeze(-2), mu, var)
    fast = log_normal_diag_components(z, mu, var)
    assert fast.shape == (8, 4, 50)
    torch.testing.assert_close(fast, direct, rtol=1e-12, atol=1e-10)
    (g_direct,) = torch.autograd.grad(direct.sum(), z)
    (g_fast,) = torch.autograd.grad(fast.sum(), z)
    torch.testing.assert_close(g_fast, g_direct, rtol=1e-12, atol=1e-10)
