"""The z-conditioned selector: ``P(A preferred | z) = sigmoid(logit(A, B, z))``.

Both forms are antisymmetric in A and B, so a swapped pair gets exactly the negated logit and
position bias is impossible by construction.
"""

from __future__ import annotations

import torch
from torch import nn


def _broadcast(g: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast features ``[..., F]`` and latents ``[..., d]`` over their leading dimensions."""
    lead = torch.broadcast_shapes(g.shape[:-1], z.shape[:-1])
    return g.expand(*lead, g.shape[-1]), z.expand(*lead, z.shape[-1])


class RewardSelector(nn.Module):
    """VPL form: ``r(x, z) = MLP([g(h_x); z])`` and ``logit = r(A, z) - r(B, z)``."""

    def __init__(self, feature_dim: int, latent_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.reward = nn.Sequential(
            nn.Linear(feature_dim + latent_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def score(self, g_x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g_x, z = _broadcast(g_x, z)
        return self.reward(torch.cat([g_x, z], dim=-1)).squeeze(-1)

    def forward(self, g_a: torch.Tensor, g_b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.score(g_a, z) - self.score(g_b, z)


class LogitBiasSelector(nn.Module):
    """Paper form on frozen features: ``logit = w . f + f . (W z)`` with ``f = g(h_A) - g(h_B)``.

    ``z`` bends the preference direction ``w + W z`` in feature space; being linear in ``f`` the
    logit is exactly antisymmetric.
    """

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.base = nn.Linear(feature_dim, 1, bias=False)
        self.bias = nn.Linear(latent_dim, feature_dim, bias=False)

    def forward(self, g_a: torch.Tensor, g_b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        f = g_a - g_b
        f, z = _broadcast(f, z)
        return self.base(f).squeeze(-1) + (f * self.bias(z)).sum(dim=-1)

    def grid(self, g_a: torch.Tensor, g_b: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``forward`` of pairs ``[n, F]`` at each of ``points [J, d]`` at once, ``[J, n]``:
        one matrix product instead of broadcasting to ``[J, n, F]``, which at the prior's
        4,096 draws was about 12x slower (measured). Equal to ``forward`` up to rounding."""
        return self.grid_of_features(g_a - g_b, points)

    def grid_of_features(self, f: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``grid`` from pair features ``f = g(h_A) - g(h_B)`` ``[..., n, F]``: ``[..., J, n]``
        (leading dimensions, e.g. a batch of context sets, broadcast)."""
        return self.base(f).squeeze(-1).unsqueeze(-2) + self.bias(points) @ f.transpose(-1, -2)
