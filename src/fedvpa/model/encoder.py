"""Pair feature ``g`` and the set encoder of the posterior ``q(z | C)``.

The pair feature is siamese, ``f(A, B) = g(h_A) - g(h_B)``, so that swapping A and B flips the
sign exactly (IEEE subtraction is sign-symmetric): position bias cannot be learned by the
feature. The set encoder reads a client's context pairs oriented chosen-minus-rejected, so the
labels enter ``z`` only through the orientation of the context, never through the queries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from fedvpa.model.config import ModelConfig


class PairFeature(nn.Module):
    """The shared map ``g`` on frozen backbone embeddings: linear (``layers=1``) or an MLP.

    A linear ``g`` is the probes' model class (``fedvpa headroom``): with a dozen pairs per
    client an MLP ``g`` memorises the training pairs' labels before the latent learns the user
    types (centralised VPL on synthetic-4: 97% train, 80% test), a linear one much less.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        feature_dim: int,
        dropout: float = 0.0,
        layers: int = 2,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        # Dropout on the frozen embeddings: a client holds a dozen pairs, and without it g
        # memorises their labels within one round (train accuracy 0.97, test at the monolithic
        # level on plural-4); with it the latent has to carry the preference.
        self.input_dropout = nn.Dropout(input_dropout)
        if layers == 1:
            self.net: nn.Module = nn.Linear(input_dim, feature_dim, bias=False)
        else:
            self.net = nn.Sequential(
                nn.Linear(input_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, feature_dim),
            )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> PairFeature:
        """The ``g`` a model config describes (shared by the latent model and the BT heads)."""
        return cls(
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.feature_dim,
            cfg.dropout,
            cfg.feature_layers,
            cfg.input_dropout,
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_dropout(h))

    def pair(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        """``f(A, B) = g(h_A) - g(h_B)``: antisymmetric in A and B by construction (in eval
        mode; in training the two sides get independent dropout masks)."""
        return self.forward(h_a) - self.forward(h_b)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, K, F]`` over the valid positions of ``mask [B, K]`` (True = valid)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    count = weights.sum(dim=-2).clamp_min(1.0)
    return (x * weights).sum(dim=-2) / count


class SetEncoder(nn.Module):
    """Permutation-invariant encoder of a context set into ``(mu, logvar)`` of ``q(z | C)``.

    ``kind="attention"``: one pre-norm self-attention block (padded keys masked out) followed by
    masked mean pooling, as in VPL. ``kind="mean"``: masked mean pooling of an MLP of each pair.
    Padded positions never influence valid ones, so a padded batch gives the same posterior as
    the unpadded context.
    """

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        kind: str = "attention",
        heads: int = 4,
        dropout: float = 0.0,
        logvar_min: float = -8.0,
        logvar_max: float = 4.0,
        mu_bias: bool = True,
    ):
        super().__init__()
        self.kind = kind
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        self.embed = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU())
        if kind == "attention":
            self.norm1 = nn.LayerNorm(feature_dim)
            self.attn = nn.MultiheadAttention(feature_dim, heads, dropout=dropout, batch_first=True)
            self.norm2 = nn.LayerNorm(feature_dim)
            self.ff = nn.Sequential(
                nn.Linear(feature_dim, 2 * feature_dim),
                nn.GELU(),
                nn.Linear(2 * feature_dim, feature_dim),
            )
        # An odd (antisymmetrised) encoder cancels a constant in mu, so it has no mu bias.
        self.mu_head = nn.Linear(feature_dim, latent_dim, bias=mu_bias)
        self.logvar_head = nn.Linear(feature_dim, latent_dim)

    def forward(
        self,
        oriented: torch.Tensor,
        mask: torch.Tensor,
        validate: bool = True,
        flat_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Oriented features ``[B, K, F]``, mask ``[B, K]`` -> ``(mu, logvar)``, each ``[B, d]``.

        ``validate=False`` skips the check that every set has a valid pair: a check on the
        mask's values cannot run inside ``torch.func.vmap``, so the batched local step checks
        its masks once, before mapping. ``flat_attention``: the attention block computed by
        ``_flat_attention`` instead of ``nn.MultiheadAttention`` (the same function, other
        rounding; for the batched local step only, see there)."""
        if oriented.dim() != 3 or mask.shape != oriented.shape[:2]:
            raise ValueError(
                f"SetEncoder expects [B, K, F] features and a [B, K] mask, got "
                f"{tuple(oriented.shape)} and {tuple(mask.shape)}"
            )
        mask = mask.bool()
        if validate and not bool(mask.any(dim=1).all()):
            raise ValueError("every context set needs at least one valid pair")
        x = self.embed(oriented)
        if self.kind == "attention":
            y = self.norm1(x)
            if flat_attention:
                attn = self._flat_attention(y, mask)
            else:
                attn, _ = self.attn(y, y, y, key_padding_mask=~mask, need_weights=False)
            x = x + attn
            x = x + self.ff(self.norm2(x))
        pooled = masked_mean(x, mask)
        mu = self.mu_head(pooled)
        logvar = self.logvar_head(pooled).clamp(self.logvar_min, self.logvar_max)
        return mu, logvar

    def _flat_attention(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``self.attn(y, y, y, key_padding_mask=~mask)``'s output, with every projection applied
        to the ``[B * K, F]`` rows at once. Why: mapped over clients by ``torch.func.vmap``,
        ``nn.MultiheadAttention`` projects its ``[K, B, F]`` transpose, and the batching rule of
        that projection's weight gradient then multiplies per position and sums afterwards, a
        ``[C, K, F, 3F]`` intermediate that was a fifth of the batched local step (profiled with
        100 clients in one pass); on flat rows the gradient is one matrix product per client."""
        attn = self.attn
        batch, length, width = y.shape
        qkv = F.linear(y.reshape(batch * length, width), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.reshape(batch, length, 3 * width).chunk(3, dim=-1)
        heads = attn.num_heads
        out = F.scaled_dot_product_attention(
            _heads(q, heads),
            _heads(k, heads),
            _heads(v, heads),
            attn_mask=mask[:, None, None, :],
            dropout_p=attn.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch * length, width)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias).reshape(batch, length, width)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, K, F]`` -> ``[B, heads, K, F / heads]`` (MultiheadAttention's head split)."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(1, 2)


def laplace_posterior(
    oriented: torch.Tensor,
    mask: torch.Tensor,
    base: torch.Tensor,
    coupling: torch.Tensor,
    prior_var: float = 1.0,
    steps: int = 3,
    logvar_min: float = -8.0,
    logvar_max: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q(z | C)`` as the Laplace approximation of the selector's own posterior over ``z``.

    The logit-bias selector is linear in ``z``: an oriented context pair (chosen minus rejected,
    feature ``f``) has ``logit = a + b . z`` with ``a = w . f`` and ``b = W^T f``. So the exact
    posterior of ``z`` under the prior ``N(0, prior_var I)`` is a Bayesian logistic regression
    on the context pairs, whose mode ``steps`` bound-optimisation (MM) iterations from ``z = 0``
    approach (in ``d`` dimensions, a ``d x d`` solve per client). Its covariance is the inverse
    Hessian there; ``q`` keeps its diagonal. Nothing here is learned: the encoder is the
    selector's own likelihood, so it weighs each context pair by how much the current model
    learns from it, sums the evidence of all ``k`` pairs (a mean would not grow more certain
    with ``k``), and cannot lag behind the selector it encodes for. Every step is
    differentiable.

    ``oriented [B, K, F]``, ``mask [B, K]``, ``base [F]`` (``w``), ``coupling [F, d]`` (``W``).
    """
    m = mask.to(oriented.dtype)
    a = oriented @ base  # [B, K]
    b = oriented @ coupling  # [B, K, d]
    batch, d = oriented.shape[0], coupling.shape[1]
    eye = torch.eye(d, dtype=oriented.dtype).expand(batch, d, d) / prior_var
    # Bohning's bound p(1 - p) <= 1/4 gives a fixed curvature matrix that majorises the
    # Hessian: each step provably decreases the negative log-posterior (plain Newton can
    # diverge when a few pairs are separable), and one Cholesky factor serves every step.
    bound = torch.linalg.cholesky(eye + 0.25 * torch.einsum("bk,bki,bkj->bij", m, b, b))
    z = torch.zeros(batch, d, dtype=oriented.dtype)
    for _ in range(steps):
        p = torch.sigmoid(a + (b * z.unsqueeze(1)).sum(-1))  # P(chosen preferred | z)
        grad = (((1 - p) * m).unsqueeze(-1) * b).sum(1) - z / prior_var
        z = z + torch.cholesky_solve(grad.unsqueeze(-1), bound).squeeze(-1)
    p = torch.sigmoid(a + (b * z.unsqueeze(1)).sum(-1))
    hessian = eye + torch.einsum("bk,bki,bkj->bij", p * (1 - p) * m, b, b)
    var = torch.diagonal(torch.linalg.inv(hessian), dim1=-2, dim2=-1)
    return z, torch.log(var).clamp(logvar_min, logvar_max)


def reparameterise(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[S, *mu.shape]`` samples ``mu + sigma * eps``, differentiable in ``mu`` and ``logvar``;
    ``eps`` are the standard normal draws, if already drawn."""
    if eps is None:
        eps = torch.randn(
            (num_samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device
        )
    return mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps
