"""Latent-space diagnostics: posterior collapse (KL, active units), type separation, moments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import silhouette_score


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over clients of ``KL(q_k || N(0, 1))`` per latent dimension ``k``: ``[d]``.

    Dimensions near 0 carry no information (collapsed).
    """
    return (0.5 * (torch.exp(logvar) + mu.pow(2) - 1.0 - logvar)).mean(dim=0)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of dimensions with ``Var_clients E_q[z_k] > threshold`` (Burda et al.)."""
    if mu.shape[0] < 2:
        return 0
    return int((mu.var(dim=0, unbiased=False) > threshold).sum())


def latent_silhouette(
    mu: torch.Tensor | np.ndarray, type_labels: Sequence[int] | np.ndarray
) -> float:
    """Silhouette of client posterior means grouped by true user type (nan if undefined)."""
    points = np.asarray(mu.detach() if isinstance(mu, torch.Tensor) else mu, dtype=np.float64)
    labels = np.asarray(type_labels)
    num = len(set(labels.tolist()))
    if num < 2 or num >= len(labels):
        return float("nan")
    return float(silhouette_score(points, labels))


def moment_match(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gaussian for a client from posteriors of several context subsamples ``[S, d]``.

    ``mu_bar = mean mu``, ``sigma_bar^2 = mean sigma^2 + var mu``: the moment-matched
    approximation of the equal-weight mixture, so the spread across subsets is not lost.
    """
    mu_bar = mu.mean(dim=0)
    sigma2_bar = torch.exp(logvar).mean(dim=0) + mu.var(dim=0, unbiased=False)
    return mu_bar, sigma2_bar
