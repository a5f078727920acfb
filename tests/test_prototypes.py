"""Orthogonal prototypes and the balanced prototype assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvpa.errors import ConfigError
from fedvpa.model.prototypes import (
    OrthogonalPrototypes,
    assign_prototype_labels,
    balanced_kmeans,
    balanced_kmeans_with_centroids,
    match_clusters_to_prototypes,
    nearest_orthogonal_prototypes,
    order_clusters_by_prototypes,
    orthonormal_rows,
)


def test_initial_prototypes_are_orthogonal_with_radius() -> None:
    protos = OrthogonalPrototypes(4, 32, radius=5.0, seed=3)
    gram = protos.weight @ protos.weight.T
    torch.testing.assert_close(gram, 25.0 * torch.eye(4), atol=1e-4, rtol=0)
    assert float(protos.orthonormality_loss().detach()) < 1e-6
    same = OrthogonalPrototypes(4, 32, radius=5.0, seed=3)
    torch.testing.assert_close(protos.weight, same.weight)
    with torch.no_grad():
        protos.weight[0] *= 1.1
    assert float(protos.orthonormality_loss().detach()) > 1.0


def test_too_many_prototypes_rejected() -> None:
    with pytest.raises(ConfigError):
        OrthogonalPrototypes(5, 4)


def test_pull_loss_is_mean_squared_distance() -> None:
    protos = OrthogonalPrototypes(2, 3, radius=1.0, seed=0)
    labels = torch.tensor([0, 1])
    z = protos.weight.detach()[labels] + torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert float(protos.pull_loss(z, labels).detach()) == pytest.approx(2.5)
    # Leading sample dimension broadcasts.
    assert float(protos.pull_loss(z.expand(3, 2, 3), labels).detach()) == pytest.approx(2.5)


@pytest.mark.parametrize(("n", "k"), [(10, 3), (12, 4), (7, 2), (100, 2), (3, 5)])
def test_balanced_kmeans_sizes_within_one(n: int, k: int) -> None:
    rng = np.random.default_rng(n * k)
    # Deliberately unbalanced blobs: a plain k-means would give unequal clusters.
    points = np.concatenate([rng.normal(0, 0.1, (n - n // 5, 2)), rng.normal(5, 0.1, (n // 5, 2))])
    labels, centroids = balanced_kmeans_with_centroids(points, k, seed=0)
    assert np.array_equal(balanced_kmeans(points, k, seed=0), labels)
    sizes = np.bincount(labels, minlength=k)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    assert centroids.shape == (k, 2)


def test_balanced_kmeans_recovers_two_equal_blobs() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-3, 0.2, (10, 4)), rng.normal(3, 0.2, (10, 4))])
    labels = balanced_kmeans(points, 2, seed=1)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]


def test_matching_and_assignment_follow_geometry() -> None:
    protos = np.array([[5.0, 0.0], [0.0, 5.0]])
    perm = match_clusters_to_prototypes(np.array([[0.1, 4.0], [4.0, 0.2]]), protos)
    assert perm.tolist() == [1, 0]
    rng = np.random.default_rng(1)
    mu = np.concatenate([rng.normal([0, 3], 0.3, (6, 2)), rng.normal([3, 0], 0.3, (6, 2))])
    labels = assign_prototype_labels(mu, protos, seed=0)
    assert labels.tolist() == [1] * 6 + [0] * 6
    module = OrthogonalPrototypes(2, 2)  # the fallback rule, on these prototypes
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(protos, dtype=torch.float32))
    nearest = module.nearest(torch.as_tensor(mu, dtype=torch.float32))
    assert nearest.tolist() == [1] * 6 + [0] * 6


def test_clusters_and_centroids_are_renamed_in_prototype_order() -> None:
    rng = np.random.default_rng(0)
    protos = np.array([[5.0, 0.0], [0.0, 5.0]])
    mus = np.concatenate([rng.normal(size=(5, 2)) + [0, 4], rng.normal(size=(5, 2)) + [4, 0]])
    labels, centroids = balanced_kmeans_with_centroids(mus, 2, seed=0)
    named, ordered = order_clusters_by_prototypes(labels, centroids, protos)
    assert named.tolist() == [1] * 5 + [0] * 5
    assert np.linalg.norm(ordered[0] - [4, 0]) < 1.5 and np.linalg.norm(ordered[1] - [0, 4]) < 1.5


def test_assignment_with_fewer_clients_than_prototypes() -> None:
    protos = np.eye(3) * 5
    labels = assign_prototype_labels(np.array([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0]]), protos)
    assert labels.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("n", "k", "share"), [(10, 2, 0.5), (20, 4, 0.5), (9, 3, 0.3), (50, 2, 0.8)]
)
def test_relaxed_balance_keeps_every_cluster_above_its_floor(n, k, share) -> None:
    rng = np.random.default_rng(n + k)
    points = np.concatenate([rng.normal(0, 0.1, (n - 1, 2)), rng.normal(9, 0.1, (1, 2))])
    labels = balanced_kmeans(points, k, seed=0, min_share=share)
    sizes = np.bincount(labels, minlength=k)
    assert sizes.sum() == n and sizes.min() >= max(1, int(np.floor(share * n / k)))


def test_relaxed_balance_follows_an_uneven_split_that_strict_balance_breaks() -> None:
    rng = np.random.default_rng(4)
    truth = np.array([0] * 8 + [1] * 2)  # 10 sampled clients split 8:2
    points = np.where(truth[:, None] == 0, -3.0, 3.0) + rng.normal(0, 0.3, (10, 3))

    def errors(labels: np.ndarray) -> int:
        return int(min((labels != truth).sum(), (labels == truth).sum()))

    assert errors(balanced_kmeans(points, 2, seed=0, min_share=0.4)) == 0
    assert errors(balanced_kmeans(points, 2, seed=0)) == 3  # forced to 5:5


def test_nearest_orthogonal_prototypes_are_orthogonal_at_radius_and_nearest() -> None:
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(3, 8))
    protos = nearest_orthogonal_prototypes(centroids, radius=5.0)
    np.testing.assert_allclose(protos @ protos.T, 25.0 * np.eye(3), atol=1e-4)
    best = np.linalg.norm(protos - centroids)
    for seed in range(20):  # no other orthogonal radius-5 set is closer (Procrustes optimum)
        other = orthonormal_rows(3, 8, seed).numpy() * 5.0
        assert best <= np.linalg.norm(other - centroids) + 1e-6
    exact = orthonormal_rows(2, 8, 1).numpy() * 2.0  # already a valid set: returned unchanged
    np.testing.assert_allclose(nearest_orthogonal_prototypes(exact, 2.0), exact, atol=1e-5)
    with pytest.raises(ValueError, match="M <= d"):
        nearest_orthogonal_prototypes(rng.normal(size=(5, 3)), 1.0)
