"""Orthogonal prototypes (paper Eq. 9) and the server's balanced prototype assignment.

Clients are spread over ``M`` prototypes by balanced k-means on their posterior means so that no
prototype is starved (a plain k-means can put every client in one cluster early on, which would
pull every ``z`` to the same point and collapse the latent space).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import kmeans_plusplus
from torch import nn

from fedvpa.errors import ConfigError


def orthonormal_rows(num: int, dim: int, seed: int) -> torch.Tensor:
    """``num`` orthonormal rows in R^dim from the QR decomposition of a seeded Gaussian matrix."""
    if num > dim:
        raise ConfigError(
            f"{num} orthogonal prototypes do not fit in {dim} dimensions", field="num_prototypes"
        )
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, num, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: makes the result seed-stable
    return q.T.contiguous().float()


class OrthogonalPrototypes(nn.Module):
    """``M`` learnable prototypes ``P [M, d]``: orthonormal at init, scaled to radius ``s``."""

    def __init__(self, num: int, dim: int, radius: float = 5.0, seed: int = 0):
        super().__init__()
        self.radius = float(radius)
        self.weight = nn.Parameter(orthonormal_rows(num, dim, seed) * self.radius)

    @property
    def num(self) -> int:
        return int(self.weight.shape[0])

    def pull_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``mean ||z - p_y||^2`` over every leading index of ``z [..., B, d]``; ``labels [B]``."""
        target = self.weight[labels.long()]
        return (z - target).pow(2).sum(dim=-1).mean()

    def orthonormality_loss(self, active: int | None = None) -> torch.Tensor:
        """``||P P^T - s^2 I||_F^2`` over the first ``active`` rows (all by default): zero
        exactly when they are orthogonal with norm ``s``. Rows beyond the number of groups in
        use are left alone."""
        rows = self.weight[: active or self.num]
        gram = rows @ rows.T
        eye = torch.eye(rows.shape[0], dtype=gram.dtype) * self.radius**2
        return (gram - eye).pow(2).sum()

    def nearest(self, z: torch.Tensor, active: int | None = None) -> torch.Tensor:
        """Index of the nearest of the first ``active`` prototypes for each row of ``z [N, d]``
        (the fallback label)."""
        rows = self.weight.detach()[: active or self.num]
        return torch.cdist(z.detach().float(), rows).argmin(dim=-1)


def _size_bounds(n: int, k: int, min_share: float) -> tuple[int, int]:
    """``(min, max)`` cluster size: each cluster holds at least ``min_share`` of its even share."""
    if min_share >= 1.0:
        return n // k, -(-n // k)
    low = max(1, int(np.floor(min_share * n / k)))  # never an empty cluster
    return low, n - (k - 1) * low


def _balanced_assign(
    points: np.ndarray, centroids: np.ndarray, min_share: float = 1.0
) -> np.ndarray:
    """Minimum-cost assignment of points to centroids with size bounds (``_size_bounds``).

    Each centroid gets ``max`` slots, the first ``min`` of them required. Dummy points fill the
    slots no real point takes; they may only take optional slots, so every required slot holds
    a real point. ``min_share = 1`` gives the classic balanced sizes ``q`` or ``q + 1``.
    """
    n, k = points.shape[0], centroids.shape[0]
    low, high = _size_bounds(n, k, min_share)
    dist = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)  # [N, k]
    cost_real = np.repeat(dist, high, axis=1)  # column c * high + s -> centroid c
    big = float(dist.max() + 1.0) * (n + 1) * 10.0
    dummy = np.full((k * high - n, k * high), big)
    optional = (np.arange(k * high) % high) >= low
    dummy[:, optional] = 0.0
    cost = np.vstack([cost_real, dummy])
    rows, cols = linear_sum_assignment(cost)
    labels = np.empty(n, dtype=np.int64)
    real = rows < n
    labels[rows[real]] = cols[real] // high
    return labels


def balanced_kmeans(
    points: np.ndarray, k: int, seed: int = 0, iterations: int = 10, min_share: float = 1.0
) -> np.ndarray:
    """Balanced k-means labels ``[N]`` in ``0 .. k-1``; sizes within 1 of each other when
    ``min_share = 1``, else at least ``floor(min_share * N / k)`` per cluster."""
    return balanced_kmeans_with_centroids(points, k, seed, iterations, min_share)[0]


def balanced_kmeans_with_centroids(
    points: np.ndarray, k: int, seed: int = 0, iterations: int = 10, min_share: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means: ``(labels [N], centroids [k, d])``, sizes bounded by ``_size_bounds``.

    Strict balance (``min_share = 1``) is the paper's rule. It is wrong whenever the sampled
    clients are not split evenly between the groups (10 of a 50:50 population split 7:3 or
    worse in a third of rounds, unevenly in three of four), and each forced label pulls a
    client towards the other group's prototype; ``min_share < 1`` keeps the guard against one
    cluster taking everyone.

    k-means++ seeding, then alternate balanced assignment (Hungarian on replicated centroid slots)
    and centroid updates until the labels stop changing.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"balanced_kmeans needs a non-empty [N, d] array, got {points.shape}")
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}", field="num_prototypes")
    n = points.shape[0]
    if n <= k:
        labels = np.arange(n, dtype=np.int64)
        centroids = np.zeros((k, points.shape[1]))
        centroids[:n] = points
        return labels, centroids
    centroids, _ = kmeans_plusplus(points, k, random_state=seed)
    labels = _balanced_assign(points, centroids, min_share)
    for _ in range(iterations):
        centroids = np.stack([points[labels == c].mean(axis=0) for c in range(k)])
        new = _balanced_assign(points, centroids, min_share)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, centroids


def match_clusters_to_prototypes(centroids: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """``perm[c]`` = prototype index of cluster ``c`` (Hungarian on squared distances)."""
    centroids = np.asarray(centroids, dtype=np.float64)
    prototypes = np.asarray(prototypes, dtype=np.float64)
    if centroids.shape != prototypes.shape:
        raise ValueError(
            f"{centroids.shape[0]} clusters cannot be matched to {prototypes.shape[0]} prototypes"
        )
    cost = ((centroids[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return perm


def order_clusters_by_prototypes(
    labels: np.ndarray, centroids: np.ndarray, prototypes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """k-means output renamed by prototype: ``(prototype label per point, centroids [M, d] in
    prototype order)``; the centroids are what unlabelled clients compare themselves with."""
    perm = match_clusters_to_prototypes(centroids, prototypes)
    ordered = np.empty_like(np.asarray(centroids, dtype=np.float64))
    ordered[perm] = centroids
    return perm[labels].astype(np.int64), ordered.astype(np.float32)


def assign_prototype_labels(
    client_mu: np.ndarray, prototypes: np.ndarray, seed: int = 0, min_share: float = 1.0
) -> np.ndarray:
    """Prototype label of each client: balanced k-means (k = M), clusters matched to prototypes."""
    prototypes = np.asarray(prototypes, dtype=np.float64)
    client_mu = np.asarray(client_mu, dtype=np.float64)
    if client_mu.shape[0] < prototypes.shape[0]:
        # Too few clients to cluster: each one is its own cluster, so nearest-free matching.
        cost = ((client_mu[:, None, :] - prototypes[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        out = np.empty(len(rows), dtype=np.int64)
        out[rows] = cols
        return out
    labels, centroids = balanced_kmeans_with_centroids(
        client_mu, prototypes.shape[0], seed, min_share=min_share
    )
    return order_clusters_by_prototypes(labels, centroids, prototypes)[0]


def nearest_orthogonal_prototypes(centroids: np.ndarray, radius: float) -> np.ndarray:
    """The rows ``P`` with ``P P^T = s^2 I`` nearest ``centroids [M, d]`` (orthogonal Procrustes).

    ``argmin ||P - C||_F`` under that constraint is ``s U V^T`` for the thin SVD ``C = U S V^T``;
    row ``j`` stays the prototype of cluster ``j``.
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[0] > centroids.shape[1]:
        raise ValueError(f"need [M, d] centroids with M <= d, got {centroids.shape}")
    u, _, vt = np.linalg.svd(centroids, full_matrices=False)
    return (radius * u @ vt).astype(np.float32)


def choose_num_groups(
    points: np.ndarray, k_max: int, seed: int = 0, k_min: int = 2
) -> tuple[int, dict[int, float]]:
    """The number of groups in the clients' posterior means: the best mean silhouette.

    ``(k, {k: silhouette})`` over ``k = k_min .. min(k_max, N - 1)``, k-means with 10 restarts
    for each. The silhouette compares each point's distance to its own cluster with the nearest
    other one, so it needs no noise model (BIC would, and posterior means of clients with a
    dozen pairs are not Gaussian blobs). It cannot say "one group"; the prototype pull needs
    at least two anyway. Ties go to the smaller ``k``. With too few points for two clusters
    ``k_min`` is returned with no scores.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"choose_num_groups needs an [N, d] array, got {points.shape}")
    if k_min < 2 or k_max < k_min:
        raise ConfigError(f"need 2 <= k_min <= k_max, got {k_min}, {k_max}", field="max_groups")
    top = min(k_max, points.shape[0] - 1)
    scores: dict[int, float] = {}
    for k in range(k_min, top + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = float(silhouette_score(points, labels))
    if not scores:
        return k_min, {}
    best = max(scores.values())
    return min(k for k, s in scores.items() if s >= best - 1e-12), scores
