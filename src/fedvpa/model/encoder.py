"""Pair feature ``g`` and the set encoder of the posterior ``q(z | C)``.

The pair feature is siamese, ``f(A, B) = g(h_A) - g(h_B)``, so that swapping A and B flips the
sign exactly (IEEE subtraction is sign-symmetric): position bias cannot be learned by the
feature. The set encoder reads a client's context pairs oriented chosen-minus-rejected, so the
labels enter ``z`` only through the orientation of the context, never through the queries.
"""

from __future__ import annotations

import torch
from torch import nn


class PairFeature(nn.Module):
    """The shared MLP ``g`` on frozen backbone embeddings."""

    def __init__(self, input_dim: int, hidden_dim: int, feature_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def pair(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        """``f(A, B) = g(h_A) - g(h_B)``: antisymmetric in A and B by construction."""
        return self.net(h_a) - self.net(h_b)


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
        self.mu_head = nn.Linear(feature_dim, latent_dim)
        self.logvar_head = nn.Linear(feature_dim, latent_dim)

    def forward(
        self, oriented: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Oriented features ``[B, K, F]``, mask ``[B, K]`` -> ``(mu, logvar)``, each ``[B, d]``."""
        if oriented.dim() != 3 or mask.shape != oriented.shape[:2]:
            raise ValueError(
                f"SetEncoder expects [B, K, F] features and a [B, K] mask, got "
                f"{tuple(oriented.shape)} and {tuple(mask.shape)}"
            )
        mask = mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every context set needs at least one valid pair")
        x = self.embed(oriented)
        if self.kind == "attention":
            y = self.norm1(x)
            attn, _ = self.attn(y, y, y, key_padding_mask=~mask, need_weights=False)
            x = x + attn
            x = x + self.ff(self.norm2(x))
        pooled = masked_mean(x, mask)
        mu = self.mu_head(pooled)
        logvar = self.logvar_head(pooled).clamp(self.logvar_min, self.logvar_max)
        return mu, logvar


def reparameterise(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[S, *mu.shape]`` samples ``mu + sigma * eps``, differentiable in ``mu`` and ``logvar``."""
    eps = torch.randn(
        (num_samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device
    )
    return mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps
