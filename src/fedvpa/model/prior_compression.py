"""Compressing the Federated Mixture Prior: J weighted diagonal Gaussians -> at most K.

The prior store holds one component per client seen within ``prior-max-age`` rounds, and every
client receives all of them and evaluates the whole mixture in its KL term each local step, so
both the payload and the step time grow with J. The server instead sends a K-component summary.

Rule (deterministic, so every client of a round gets the same summary and a rerun the same
payload): weighted k-means on the component means (weights = the components' weights, k-means++
seeding from ``numpy.random.default_rng(seed)``, Lloyd iterations until the assignment stops
changing), then each cluster is replaced by its moment-matched Gaussian. Clustering on the means
alone is cheap (``O(J K d)`` per iteration, so J = 10,000 takes milliseconds) whereas greedy pair
merging by moment-matching cost (Runnalls) is ``O(J^2)`` at best; the means are what separates
user types, the variances are floored and similar.

Moment matching keeps, exactly (up to rounding), each cluster's total weight and the mixture's
overall mean and per-dimension variance. It cannot keep the off-diagonal covariance of the
mixture: the spread of a cluster's means becomes an axis-aligned variance. Clusters are merged
only among themselves, so a mixture with K >= J is returned unchanged (bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CompressedMixture:
    """A merged mixture and which merged component each input component went into."""

    mu: np.ndarray  # [K', d]
    var: np.ndarray  # [K', d]
    weight: np.ndarray  # [K'] sum of the merged components' weights
    assignment: np.ndarray  # [J] index of the merged component of each input component

    @property
    def num_components(self) -> int:
        return int(self.weight.shape[0])


def _group_sum(values: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Row sums of ``values [J, d]`` per group (``bincount`` per column: ``np.add.at`` is ~100x
    slower at J = 10,000)."""
    return np.stack(
        [np.bincount(groups, weights=col, minlength=num_groups) for col in values.T], axis=1
    )


def moment_match_groups(
    mu: np.ndarray, var: np.ndarray, weight: np.ndarray, assignment: np.ndarray, num_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: ``(mean, variance, weight)`` of the single Gaussian with the group's moments.

    ``weight = sum w_j``, ``mean = sum w_j mu_j / weight`` and ``variance = sum w_j (var_j +
    mu_j^2) / weight - mean^2``, computed in the centred form ``sum w_j (var_j + (mu_j -
    mean)^2) / weight`` (the same number without the cancellation, and never negative), in
    float64. Every group must hold at least one component.
    """
    mu64 = np.asarray(mu, np.float64)
    var64 = np.asarray(var, np.float64)
    w64 = np.asarray(weight, np.float64)
    groups = np.asarray(assignment, np.int64)
    total = np.bincount(groups, weights=w64, minlength=num_groups)
    if total.shape[0] != num_groups or not bool((total > 0).all()):
        raise ValueError("every group needs at least one component of positive weight")
    mean = _group_sum(w64[:, None] * mu64, groups, num_groups) / total[:, None]
    second = w64[:, None] * (var64 + (mu64 - mean[groups]) ** 2)
    return mean, _group_sum(second, groups, num_groups) / total[:, None], total


def _kmeans_plus_plus(
    points: np.ndarray, weight: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``k`` seed centres; fewer when the points have fewer distinct locations."""
    first = int(rng.choice(len(points), p=weight / weight.sum()))
    centres = [points[first]]
    dist = ((points - centres[0]) ** 2).sum(-1)
    while len(centres) < k:
        score = weight * dist
        if not score.sum() > 0:
            break  # every point sits on a centre already
        nxt = int(rng.choice(len(points), p=score / score.sum()))
        centres.append(points[nxt])
        dist = np.minimum(dist, ((points - points[nxt]) ** 2).sum(-1))
    return np.stack(centres)


def _assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # argmin_c ||x - c||^2 = argmin_c (||c||^2 - 2 x.c): no [J, K, d] intermediate and no
    # ||x||^2 term (the same for every c); ties -> the lowest c.
    return ((centres**2).sum(-1)[None] - 2.0 * (points @ centres.T)).argmin(axis=1)


def weighted_kmeans(
    points: np.ndarray, weight: np.ndarray, k: int, seed: int = 0, max_iter: int = 100
) -> np.ndarray:
    """Cluster index per point (``0 .. K'-1``, ``K' <= k``, no empty cluster), deterministic.

    Clusters are numbered by their first member, so the labels depend only on the partition.
    """
    x = np.asarray(points, np.float64)
    w = np.asarray(weight, np.float64)
    centres = _kmeans_plus_plus(x, w, k, np.random.default_rng(seed))
    labels = _assign(x, centres)
    for _ in range(max_iter):
        _, labels = np.unique(labels, return_inverse=True)  # drop empty clusters
        count = int(labels.max()) + 1
        mass = np.bincount(labels, weights=w, minlength=count)
        new = _assign(x, _group_sum(w[:, None] * x, labels, count) / mass[:, None])
        if np.array_equal(new, labels):
            break
        labels = new
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def compress_mixture(
    mu: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray,
    max_components: int,
    seed: int = 0,
) -> CompressedMixture:
    """At most ``max_components`` moment-matched components for the mixture ``(mu, var, weight)``
    (``[J, d]``, ``[J, d]``, ``[J]``; weights positive, not necessarily normalised).

    ``max_components >= J`` returns the inputs themselves (identity assignment), so turning
    compression on changes nothing until the mixture outgrows it. The output is float64 when
    it is merged.
    """
    mu = np.asarray(mu)
    var = np.asarray(var)
    weight = np.asarray(weight)
    if max_components < 1:
        raise ValueError(f"max_components must be >= 1, got {max_components}")
    if mu.ndim != 2 or var.shape != mu.shape or weight.shape != (mu.shape[0],):
        raise ValueError(
            f"components disagree: mu {mu.shape}, var {var.shape}, weight {weight.shape}"
        )
    num = mu.shape[0]
    if num and not bool((weight > 0).all()):
        raise ValueError("component weights must be positive")
    if num <= max_components:
        return CompressedMixture(mu, var, weight, np.arange(num))
    labels = weighted_kmeans(mu, weight, max_components, seed)
    groups = int(labels.max()) + 1
    m, v, w = moment_match_groups(mu, var, weight, labels, groups)
    return CompressedMixture(m, v, w, labels)


def mixture_moments(
    mu: np.ndarray, var: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Overall mean ``[d]`` and full covariance ``[d, d]`` of a diagonal-Gaussian mixture."""
    mu64 = np.asarray(mu, np.float64)
    w = np.asarray(weight, np.float64) / np.sum(weight)
    mean = w @ mu64
    centred = mu64 - mean
    cov = np.diag(w @ np.asarray(var, np.float64)) + (w[:, None] * centred).T @ centred
    return mean, cov
