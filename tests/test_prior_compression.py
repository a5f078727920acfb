"""Compressing the mixture prior: closed forms of the merge, and the payload it changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_toy_clients
from method_loop import run_in_process

from fedvpa.errors import ConfigError
from fedvpa.federation.registry import create_method
from fedvpa.methods.base import ServerState
from fedvpa.methods.posterior_store import PRIOR_KEYS, compress_prior_rows
from fedvpa.methods.variational import VariationalMethod
from fedvpa.model.config import ModelConfig
from fedvpa.model.prior_compression import (
    compress_mixture,
    mixture_moments,
    moment_match_groups,
    weighted_kmeans,
)

D = 8


def _mixture(j: int, seed: int, d: int = D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = (3.0 * rng.normal(size=(j, d))).astype(np.float32)
    var = rng.uniform(0.2, 2.0, size=(j, d)).astype(np.float32)
    weight = rng.integers(4, 17, size=j).astype(np.float32)
    return mu, var, weight


def test_two_components_merge_into_the_moment_matched_gaussian() -> None:
    mu = np.array([[0.0, 2.0], [4.0, -2.0]])
    var = np.array([[1.0, 0.5], [3.0, 0.5]])
    weight = np.array([1.0, 3.0])
    out = compress_mixture(mu, var, weight, 1)
    # mean = (1*0 + 3*4)/4 = 3, (1*2 - 3*2)/4 = -1
    # var  = (1*(1+0) + 3*(3+16))/4 - 9 = 58/4 - 9 = 5.5 ; (1*(0.5+4) + 3*(0.5+4))/4 - 1 = 3.5
    np.testing.assert_allclose(out.mu, [[3.0, -1.0]])
    np.testing.assert_allclose(out.var, [[5.5, 3.5]])
    np.testing.assert_allclose(out.weight, [4.0])
    assert out.assignment.tolist() == [0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_merge_keeps_weights_and_the_mixture_mean_and_variances(seed: int) -> None:
    mu, var, weight = _mixture(40, seed)
    groups = np.random.default_rng(seed).permutation(np.arange(40) % 7)
    m, v, w = moment_match_groups(mu, var, weight, groups, 7)
    np.testing.assert_allclose(w, np.bincount(groups, weights=weight), rtol=1e-12)
    mean0, cov0 = mixture_moments(mu, var, weight)
    mean1, cov1 = mixture_moments(m, v, w)
    np.testing.assert_allclose(mean1, mean0, atol=1e-12)
    np.testing.assert_allclose(np.diag(cov1), np.diag(cov0), rtol=1e-12)
    assert (v >= var.min(axis=0) - 1e-12).all()  # a merge never narrows below its members


def test_compression_keeps_the_moments_but_not_the_off_diagonal_covariance() -> None:
    mu, var, weight = _mixture(500, 3)
    mu[:, 1] = mu[:, 0] + 0.1 * mu[:, 1]  # correlated means: a diagonal merge must lose this
    out = compress_mixture(mu, var, weight, 4)
    assert out.num_components == 4
    np.testing.assert_allclose(out.weight.sum(), weight.astype(np.float64).sum(), rtol=1e-12)
    np.testing.assert_allclose(
        out.weight, np.bincount(out.assignment, weights=weight.astype(np.float64)), rtol=1e-12
    )
    mean0, cov0 = mixture_moments(mu, var, weight)
    mean1, cov1 = mixture_moments(out.mu, out.var, out.weight)
    np.testing.assert_allclose(mean1, mean0, atol=1e-9)
    np.testing.assert_allclose(np.diag(cov1), np.diag(cov0), rtol=1e-9)
    assert abs(cov1[0, 1] - cov0[0, 1]) > 0.1  # documented: only the diagonal is kept


@pytest.mark.parametrize("k", [5, 6, 100])
def test_at_least_as_many_slots_as_components_is_the_identity(k: int) -> None:
    mu, var, weight = _mixture(5, 0)
    out = compress_mixture(mu, var, weight, k)
    assert out.mu is mu and out.var is var and out.weight is weight
    assert out.assignment.tolist() == [0, 1, 2, 3, 4]


def test_compression_is_deterministic_and_bounded() -> None:
    mu, var, weight = _mixture(300, 4)
    a = compress_mixture(mu, var, weight, 16)
    b = compress_mixture(mu.copy(), var.copy(), weight.copy(), 16)
    for x, y in ((a.mu, b.mu), (a.var, b.var), (a.weight, b.weight), (a.assignment, b.assignment)):
        assert np.array_equal(x, y)
    assert a.num_components == 16
    assert sorted(set(a.assignment.tolist())) == list(range(16))  # no empty component
    _, first = np.unique(a.assignment, return_index=True)
    assert (np.diff(first) > 0).all()  # numbered by first member


def test_kmeans_finds_separated_groups_and_stops_at_distinct_points() -> None:
    rng = np.random.default_rng(0)
    centres = 20.0 * np.eye(4, D)
    truth = np.arange(200) % 4
    points = centres[truth] + 0.1 * rng.normal(size=(200, D))
    labels = weighted_kmeans(points, np.ones(200), 4, seed=0)
    assert all(len(set(labels[truth == t].tolist())) == 1 for t in range(4))
    assert len(set(labels.tolist())) == 4
    # three distinct locations: at most three components, whatever K asks for
    repeated = centres[np.arange(30) % 3]
    out = compress_mixture(repeated, np.ones_like(repeated), np.ones(30), 8)
    assert out.num_components == 3
    np.testing.assert_allclose(out.var, 1.0)


def test_bad_inputs_are_refused() -> None:
    mu, var, weight = _mixture(5, 0)
    with pytest.raises(ValueError):
        compress_mixture(mu, var, weight, 0)
    with pytest.raises(ValueError):
        compress_mixture(mu, var, -weight, 2)
    with pytest.raises(ValueError):
        compress_mixture(mu, var[:, :3], weight, 2)
    with pytest.raises(ConfigError, match="prior_max_components"):
        ModelConfig(prior_max_components=-1)


# ------------------------------------------------------------------------- the method's payload

SMALL = {"input_dim": 16, "hidden_dim": 32, "feature_dim": 16, "latent_dim": D}


def _store(j: int, seed: int = 0) -> dict[str, np.ndarray]:
    mu, var, weight = _mixture(j, seed)
    var[0, 0] = 0.01  # below the floor
    return {
        "prior_mu": mu,
        "prior_var": var,
        "prior_n": weight,
        "prior_ids": np.arange(100, 100 + j, dtype=np.int64),
        "prior_round": np.ones(j, np.int64),
    }


def _method(**model: object) -> VariationalMethod:
    method = create_method(
        "fedvpa-gp",
        {
            "model": {**SMALL, "prior_warmup_rounds": 1, **model},
            "local": {"local_steps": 3, "num_rounds": 5},
        },
    )
    assert isinstance(method, VariationalMethod)
    return method


def _state(method: VariationalMethod, j: int) -> ServerState:
    state = method.init_server_state(0)
    return ServerState(arrays=state.arrays, extra={**state.extra, **_store(j)}, info={})


def test_key_zero_sends_the_store_unchanged() -> None:
    for method in (_method(), _method(prior_max_components=50)):  # 0, and K >= J
        state = _state(method, 30)
        payload = method.client_payload(state, 3, 2)
        for key in PRIOR_KEYS:
            assert payload[key] is state.extra[key]
    assert "prior_mu" not in _method(prior_max_components=4).client_payload(state, 3, 1)


def test_the_merge_is_computed_once_per_store() -> None:
    method = _method(prior_max_components=4)
    state = _state(method, 30)
    first, second = (method.client_payload(state, c, 2) for c in (1, 2))
    assert all(first[key] is second[key] for key in PRIOR_KEYS)
    moved = dict(state.extra, prior_mu=state.extra["prior_mu"] + 1.0)
    again = method.client_payload(ServerState(state.arrays, moved, {}), 1, 2)
    np.testing.assert_allclose(again["prior_mu"], first["prior_mu"] + 1.0, rtol=1e-5)


def test_compressed_payload_keeps_the_floored_mixture_moments() -> None:
    method = _method(prior_max_components=4, prior_var_floor=0.5)
    state = _state(method, 30)
    payload = method.client_payload(state, 3, 2)
    assert payload["prior_mu"].shape == (4, D) and payload["prior_mu"].dtype == np.float32
    assert payload["prior_var"].dtype == np.float32 and payload["prior_n"].dtype == np.float32
    store = state.extra
    floored = np.maximum(store["prior_var"], 0.5)
    mean0, cov0 = mixture_moments(store["prior_mu"], floored, store["prior_n"])
    mean1, cov1 = mixture_moments(payload["prior_mu"], payload["prior_var"], payload["prior_n"])
    np.testing.assert_allclose(mean1, mean0, atol=1e-5)
    np.testing.assert_allclose(np.diag(cov1), np.diag(cov0), rtol=1e-5)
    np.testing.assert_allclose(payload["prior_n"].sum(), store["prior_n"].sum(), rtol=1e-6)
    ids = payload["prior_ids"]
    assert ids.dtype == np.int64 and len(set(ids.tolist())) == 4
    assert all(i in store["prior_ids"] or -(1 + i) in store["prior_ids"] for i in ids)
    assert (state.extra["prior_mu"] == _store(30)["prior_mu"]).all()  # the store is untouched


def test_own_component_is_left_out_before_merging() -> None:
    method = _method(prior_max_components=4, exclude_own_component=True)
    state = _state(method, 30)
    own = int(state.extra["prior_ids"][7])
    payload = method.client_payload(state, own, 2)
    expected = state.extra["prior_n"].sum() - state.extra["prior_n"][7]
    np.testing.assert_allclose(payload["prior_n"].sum(), expected, rtol=1e-6)
    other = method.client_payload(state, 9999, 2)  # a client without a component
    np.testing.assert_allclose(other["prior_n"].sum(), state.extra["prior_n"].sum(), rtol=1e-6)


def test_merged_ids_never_collide() -> None:
    rows = _store(12)
    rows["prior_mu"][:] = np.tile(rows["prior_mu"][:3], (4, 1))  # three locations
    sent = compress_prior_rows(rows, 5, 1.0)
    ids = sorted(sent["prior_ids"].tolist())
    assert ids == [-(1 + 102), -(1 + 101), -(1 + 100)]


def test_a_round_with_a_compressed_prior_trains_and_records_what_it_sent() -> None:
    torch.set_num_threads(1)
    clients = make_toy_clients(
        num_clients=12, pairs=24, dim=16, seed=3, num_context=8, num_test=6, num_unseen=2
    )
    method = _method(prior_max_components=3, prior_max_age=5, num_prototypes=2)
    state, private, report = run_in_process(method, clients, rounds=4, per_round=6)
    assert state.extra["prior_mu"].shape[0] > 3  # the server keeps every component
    assert state.info["prior_components_sent"] <= 3
    assert method.round_info(state)["prior_components_sent"] == state.info["prior_components_sent"]
    assert any((s.get("pi_ids", np.zeros(0)) < 0).any() for s in private.values())
    assert np.isfinite(report["seen"]["macro"])
