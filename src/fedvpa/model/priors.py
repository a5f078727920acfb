"""Priors over the latent preference ``z``: ``N(0, I)`` and the Federated Mixture Prior.

The maths is in small pure functions (tested against closed forms); the two prior classes only
hold state. Every KL is returned per client (shape ``[B]``), summed over latent dimensions.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from fedvpa.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, e^logvar) || N(0, I))`` summed over the last dimension."""
    return 0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar).sum(dim=-1)


def kl_gaussians(
    mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor, var_p: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mu_q, var_q) || N(mu_p, var_p))`` for diagonal Gaussians, summed over the last dim."""
    return 0.5 * (
        torch.log(var_p) - torch.log(var_q) + (var_q + (mu_q - mu_p).pow(2)) / var_p - 1.0
    ).sum(dim=-1)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag var)`` summed over the last dimension (arguments broadcast)."""
    return -0.5 * (LOG_2PI + torch.log(var) + (z - mu).pow(2) / var).sum(dim=-1)


def log_normal_diag_components(
    z: torch.Tensor, mu: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """``log N(z; mu_j, diag var_j)`` for every row ``z [..., d]`` and component ``j`` of
    ``mu, var [J, d]``: ``[..., J]``, by two matrix products instead of a ``[..., J, d]``
    difference (``log_normal_diag`` of ``z[..., None, :]``, other rounding): the expanded
    square ``sum (z^2 / var - 2 z mu / var + mu^2 / var)``. At J = 1,000 components the
    difference tensor was most of the batched local step's arithmetic."""
    inv = 1.0 / var  # [J, d]
    const = (LOG_2PI + torch.log(var) + mu.pow(2) * inv).sum(dim=-1)  # [J]
    quad = z.pow(2) @ inv.T - 2.0 * (z @ (mu * inv).T)  # [..., J]
    return -0.5 * (quad + const)


def sample_gumbel(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log U)``, with U kept away from 0 and 1."""
    u = torch.rand(shape, generator=generator).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_softmax_weights(
    logits: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """``softmax((logits + g) / tau)`` over the last dimension; ``noise=False`` drops ``g`` (eval).

    ``-inf`` logits (excluded components) keep weight exactly 0.
    """
    if tau <= 0:
        raise ConfigError(f"must be > 0, got {tau!r}", field="tau")
    if noise:
        logits = logits + sample_gumbel(logits.shape, generator).to(logits)
    return torch.softmax(logits / tau, dim=-1)


def mixture_kl_monte_carlo(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    comp_mu: torch.Tensor,
    comp_var: torch.Tensor,
    log_w: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    expanded: bool = False,
) -> torch.Tensor:
    """MC estimate of ``KL(q || sum_j w_j N(mu_j, var_j))`` per client.

    ``mu, logvar [B, d]``; ``comp_mu, comp_var [J, d]``; ``log_w`` broadcastable to
    ``[S, B, J]`` (``[J]``, ``[B, J]`` or per-sample ``[S, B, J]``). Samples are reparameterised so
    the estimate is differentiable in ``mu``, ``logvar`` and ``log_w``:
    ``mean_s [log q(z_s) - logsumexp_j(log w_j + log N(z_s; mu_j, var_j))]``. ``eps [S, B, d]``
    are the standard normal draws, if already drawn (the batched local step draws every random
    number before its vectorised pass); ``expanded`` evaluates the components' densities by
    ``log_normal_diag_components`` (the batched step's choice).
    """
    var = torch.exp(logvar)
    if eps is None:
        eps = torch.randn((num_samples, *mu.shape), generator=generator)
    eps = eps.to(mu)
    z = mu.unsqueeze(0) + var.sqrt().unsqueeze(0) * eps  # [S, B, d]
    log_q = log_normal_diag(z, mu.unsqueeze(0), var.unsqueeze(0))  # [S, B]
    if expanded:
        log_comp = log_normal_diag_components(z, comp_mu, comp_var)  # [S, B, J]
    else:
        log_comp = log_normal_diag(z.unsqueeze(-2), comp_mu, comp_var)  # [S, B, J]
    log_p = torch.logsumexp(log_w + log_comp, dim=-1)  # [S, B]
    return (log_q - log_p).mean(dim=0)


def mixture_kl_upper_bound(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    comp_mu: torch.Tensor,
    comp_var: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """``sum_j w_j KL(q || N_j)`` per client: an upper bound on the mixture KL (convexity of KL).

    ``weights`` broadcastable to ``[B, J]``. Components with weight 0 contribute exactly 0.
    """
    var = torch.exp(logvar)
    kl_j = kl_gaussians(mu.unsqueeze(-2), var.unsqueeze(-2), comp_mu, comp_var)  # [B, J]
    return (weights * kl_j).sum(dim=-1)


def draw_mixture_noise(
    estimator: str,
    num_samples: int,
    batch: int,
    comp_shape: torch.Size | tuple[int, ...],
    training: bool,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Every random number of one ``mixture_kl`` call for ``batch`` clients and ``comp_shape =
    (J, d)`` components: ``gumbel`` (training only) then, for the ``mc`` estimator, ``eps``."""
    num, dim = int(comp_shape[0]), int(comp_shape[1])
    noise: dict[str, torch.Tensor] = {}
    if estimator == "upper-bound":
        if training:
            noise["gumbel"] = sample_gumbel((batch, num), generator)
        return noise
    if training:
        noise["gumbel"] = sample_gumbel((num_samples, batch, num), generator)
    noise["eps"] = torch.randn((num_samples, batch, dim), generator=generator)
    return noise


def mixture_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    comp_mu: torch.Tensor,
    comp_var: torch.Tensor,
    logits: torch.Tensor,
    tau: float,
    estimator: str,
    noise: dict[str, torch.Tensor],
    expanded: bool = False,
) -> torch.Tensor:
    """``KL(q || mixture)`` per client from the mixture's (masked) ``logits [J]`` and the
    random numbers of ``draw_mixture_noise`` (no Gumbel noise = evaluation weights). A pure
    function of tensors, so the batched local step can map it over clients (``expanded``: see
    ``mixture_kl_monte_carlo``)."""
    batch = mu.shape[0]
    if estimator == "upper-bound":
        noisy = logits.expand(batch, -1)
        if "gumbel" in noise:
            noisy = noisy + noise["gumbel"].to(noisy)
        w = torch.softmax(noisy / tau, dim=-1)
        return mixture_kl_upper_bound(mu, logvar, comp_mu, comp_var, w)
    eps = noise["eps"]
    noisy = logits.expand(eps.shape[0], batch, logits.shape[-1])
    if "gumbel" in noise:
        noisy = noisy + noise["gumbel"].to(noisy)
    log_w = torch.log_softmax(noisy / tau, dim=-1)
    return mixture_kl_monte_carlo(
        mu, logvar, comp_mu, comp_var, log_w, eps.shape[0], eps=eps, expanded=expanded
    )


def standard_normal_draws(latent_dim: int, num: int, seed: int = 0) -> torch.Tensor:
    """``num`` fixed draws of N(0, I) in ``latent_dim`` dimensions, ``[num, latent_dim]``.

    Scrambled Sobol points pushed through the normal quantile: low-discrepancy, so a few
    thousand cover the prior evenly enough for a self-normalised importance-sampling posterior
    mean, and fixed by ``seed``, so every client and every evaluation weighs the same points
    (latent-inference = "prior")."""
    if latent_dim < 1 or num < 1:
        raise ConfigError(f"need latent_dim >= 1 and num >= 1, got {latent_dim}, {num}")
    u = torch.quasirandom.SobolEngine(latent_dim, scramble=True, seed=seed).draw(num)
    u = u.clamp(1e-6, 1 - 1e-6).to(torch.float32)  # Sobol may return exactly 0
    return torch.special.ndtri(u)


@lru_cache(maxsize=8)
def prior_reading_points(latent_dim: int, num: int) -> torch.Tensor:
    """``standard_normal_draws(latent_dim, num)``, made once per process and shared: the points
    that latent-inference = "prior" reads every client's ``z`` over and that the read term
    (``read-weight``) weighs at every local step. Callers must not modify it. Made outside
    ``vmap`` (Sobol's scrambling draws random numbers, which ``vmap`` refuses), so the batched
    local step asks for it before mapping."""
    return standard_normal_draws(latent_dim, num)


class StandardNormalPrior(nn.Module):
    """``N(0, I)``: the FedVPL prior, closed-form KL, no parameters."""

    def kl(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        training: bool = True,
        generator: torch.Generator | None = None,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return kl_standard_normal(mu, logvar)

    def draw_noise(
        self, batch: int, training: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return {}  # a closed-form KL draws nothing


class FederatedMixturePrior(nn.Module):
    """``p(z) = sum_j w_j N(mu_j, var_j)`` over the previous round's client posteriors.

    ``pi_logits`` is the client's private, learnable ``log pi`` (never averaged); it starts at
    ``log(n_j / sum n)`` unless ``pi_init`` carries the client's earlier value for the same
    components. With no components (round 1) or every component excluded the prior is ``N(0, I)``.
    ``exclude`` removes one component (the client's own earlier posterior) from the mixture.
    """

    def __init__(
        self,
        comp_mu: torch.Tensor,
        comp_var: torch.Tensor,
        comp_n: torch.Tensor,
        tau: float = 1.0,
        estimator: str = "mc",
        num_samples: int = 8,
        exclude: int | None = None,
        pi_init: torch.Tensor | None = None,
        var_floor: float = 1e-4,
    ):
        super().__init__()
        comp_mu = torch.as_tensor(comp_mu, dtype=torch.float32)
        comp_var = torch.as_tensor(comp_var, dtype=torch.float32)
        comp_n = torch.as_tensor(comp_n, dtype=torch.float32).reshape(-1)
        num = comp_n.shape[0]
        if comp_mu.dim() != 2 or comp_mu.shape[0] != num or comp_var.shape != comp_mu.shape:
            raise ConfigError(
                f"prior components disagree: mu {tuple(comp_mu.shape)}, var "
                f"{tuple(comp_var.shape)}, n {tuple(comp_n.shape)}",
                field="prior",
            )
        if estimator not in ("mc", "upper-bound"):
            raise ConfigError(f"unknown KL estimator {estimator!r}", field="kl_estimator")
        if tau <= 0:
            raise ConfigError(f"must be > 0, got {tau!r}", field="tau")
        if num and bool((comp_n <= 0).any()):
            raise ConfigError("component sizes n_j must be positive", field="prior")
        if exclude is not None and not 0 <= exclude < num:
            raise ConfigError(f"exclude index {exclude} outside 0..{num - 1}", field="prior")
        self.register_buffer("comp_mu", comp_mu)
        self.register_buffer("comp_var", comp_var.clamp_min(var_floor))
        self.register_buffer("comp_n", comp_n)
        mask = torch.ones(num, dtype=torch.bool)
        if exclude is not None:
            mask[exclude] = False
        self.register_buffer("comp_mask", mask)
        if pi_init is None:
            init = torch.log(comp_n / comp_n.sum()) if num else torch.zeros(0)
        else:
            init = torch.as_tensor(pi_init, dtype=torch.float32).reshape(-1)
            if init.shape[0] != num:
                raise ConfigError(
                    f"pi_init has {init.shape[0]} entries for {num} components", field="prior"
                )
        self.pi_logits = nn.Parameter(init.clone())
        self.tau = float(tau)
        self.estimator = estimator
        self.num_samples = int(num_samples)

    @property
    def num_components(self) -> int:
        return int(self.comp_mask.sum())

    def masked_logits(self) -> torch.Tensor:
        return self.pi_logits.masked_fill(~self.comp_mask, float("-inf"))

    def weights(
        self, training: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mixture weights ``w`` (Gumbel noise only when training)."""
        return gumbel_softmax_weights(self.masked_logits(), self.tau, generator, noise=training)

    def draw_noise(
        self, batch: int, training: bool, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The random numbers ``kl`` uses for ``batch`` clients, drawn in the order ``kl`` itself
        draws them (Gumbel noise of the weights, then the Monte-Carlo samples), so a step that
        draws first and computes later gets the same numbers from the same generator."""
        if self.num_components == 0:
            return {}
        return draw_mixture_noise(
            self.estimator, self.num_samples, batch, self.comp_mu.shape, training, generator
        )

    def kl(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        training: bool = True,
        generator: torch.Generator | None = None,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.num_components == 0:
            return kl_standard_normal(mu, logvar)
        if noise is None:
            noise = self.draw_noise(mu.shape[0], training, generator)
        return mixture_kl(
            mu, logvar, self.comp_mu, self.comp_var, self.masked_logits(), self.tau,
            self.estimator, noise,
        )  # fmt: skip


Prior = StandardNormalPrior | FederatedMixturePrior
