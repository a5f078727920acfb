"""The personalisation-headroom estimator against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedvpa.errors import ConfigError
from fedvpa.evaluation.headroom import (
    pair_log_likelihoods,
    personalisation_headroom,
    render_headroom,
    simulate_personalised,
    type_posterior,
)


def _opposed_data(n_per_type: int, q: float, seed: int):
    """Two types whose models are exact opposites: type 0 says P(A) = q, type 1 says 1 - q.

    Labels are drawn from the true type's model, so each context pair favours the true type with
    probability q, independently.
    """
    rng = np.random.default_rng(seed)
    types = np.repeat([0, 1], n_per_type)
    p_by_type = np.tile([q, 1.0 - q], (2 * n_per_type, 1))
    p_true = np.where(types == 0, q, 1.0 - q)
    labels = (rng.random(2 * n_per_type) < p_true).astype(int)
    return p_by_type, labels, types


def _binomial_majority(k: int, q: float) -> float:
    """P(more than half of k independent pairs favour the true type); k odd."""
    return sum(math.comb(k, j) * q**j * (1 - q) ** (k - j) for j in range(k // 2 + 1, k + 1))


def test_log_likelihoods_closed_form() -> None:
    ll = pair_log_likelihoods(np.array([[0.8, 0.3]]), np.array([1]))
    assert ll == pytest.approx(np.log([[0.8, 0.3]]))
    ll = pair_log_likelihoods(np.array([[0.8, 0.3]]), np.array([0]))
    assert ll == pytest.approx(np.log([[0.2, 0.7]]))


def test_type_posterior_is_bayes_rule() -> None:
    ctx = np.log(np.array([[0.8, 0.2], [0.6, 0.4]]))  # [k=2, T=2]
    post = type_posterior(ctx, np.log([0.5, 0.5]))
    expected = 0.8 * 0.6 / (0.8 * 0.6 + 0.2 * 0.4)
    assert post == pytest.approx([expected, 1 - expected])


@pytest.mark.parametrize("k", [1, 3, 7])
def test_identification_and_accuracy_match_the_binomial_closed_form(k: int) -> None:
    q, trials = 0.8, 20000
    p_by_type, labels, types = _opposed_data(3000, q, seed=k)
    point = simulate_personalised(p_by_type, labels, types, k, trials, np.random.default_rng(1))
    ident = _binomial_majority(k, q)
    # The mixture picks the identified type's reply; that reply is right with probability q.
    acc = q * ident + (1 - q) * (1 - ident)
    tol = 4 * math.sqrt(0.25 / trials) + 0.01  # Monte Carlo plus finite-pool label noise
    for t in (0, 1):
        assert point.type_identified[t] == pytest.approx(ident, abs=tol)
        assert point.accuracy[t] == pytest.approx(acc, abs=tol)


def test_no_context_means_no_identification() -> None:
    p_by_type, labels, types = _opposed_data(500, 0.8, seed=0)
    point = simulate_personalised(p_by_type, labels, types, 0, 1000, np.random.default_rng(0))
    # A uniform prior is a tie: half credit, and the mixture predicts exactly 0.5 (a coin flip).
    assert point.type_identified == [0.5, 0.5]
    assert point.accuracy == [0.5, 0.5]


def test_identical_type_models_give_the_shared_models_accuracy() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 2000)
    labels = (rng.random(2000) < p).astype(int)
    types = np.repeat([0, 1], 1000)
    point = simulate_personalised(
        np.stack([p, p], axis=1), labels, types, 8, 4000, np.random.default_rng(1)
    )
    assert point.type_identified == [0.5, 0.5]  # the context can never tell them apart
    for t in (0, 1):
        rows = types == t
        assert point.accuracy[t] == pytest.approx(
            ((p[rows] > 0.5) == labels[rows]).mean(), abs=0.03
        )


def _exact_with_pool_of_k_plus_one(p_by_type, labels, types, leak: bool) -> list[float]:
    """Per-type accuracy by enumeration when each type has exactly k + 1 pairs: every client is
    "all pairs but the query", the query uniform. ``leak`` puts the query in its own context."""
    ll = pair_log_likelihoods(p_by_type, labels)
    out = []
    for t in (0, 1):
        pool, hits = np.flatnonzero(types == t), []
        for q in pool:
            ctx = pool if leak else pool[pool != q]
            p = float((type_posterior(ll[ctx], np.log([0.5, 0.5])) * p_by_type[q]).sum())
            hits.append(0.5 if p == 0.5 else float((p > 0.5) == (labels[q] == 1)))
        out.append(float(np.mean(hits)))
    return out


def test_query_is_never_part_of_its_own_context() -> None:
    rng = np.random.default_rng(2)  # data on which a leaking simulation scores 0.25 higher
    k = 3
    p_by_type = rng.uniform(0.05, 0.95, (2 * (k + 1), 2))
    labels = rng.integers(0, 2, 2 * (k + 1))
    types = np.repeat([0, 1], k + 1)
    honest = _exact_with_pool_of_k_plus_one(p_by_type, labels, types, leak=False)
    leaking = _exact_with_pool_of_k_plus_one(p_by_type, labels, types, leak=True)
    assert abs(np.mean(honest) - np.mean(leaking)) > 0.2  # the check below can tell them apart
    point = simulate_personalised(p_by_type, labels, types, k, 20000, np.random.default_rng(0))
    assert point.accuracy == pytest.approx(honest, abs=0.02)
    with pytest.raises(ConfigError, match="needs at least 5"):
        simulate_personalised(p_by_type, labels, types, 4, 10, np.random.default_rng(0))


def test_headroom_end_to_end_on_linear_data() -> None:
    """Two types with opposite linear preferences: the oracle probes are good, the monolithic
    probe is near chance, and the personalised ceiling climbs from chance toward the oracle."""
    rng = np.random.default_rng(0)
    n, d = 600, 5
    x = rng.normal(size=(2 * n, d))
    types = np.repeat([0, 1], n)
    w = np.array([2.0, 0, 0, 0, 0])
    logit = np.where(types == 0, x @ w, -(x @ w))
    labels = (rng.random(2 * n) < 1 / (1 + np.exp(-logit))).astype(int)
    report = personalisation_headroom(
        x, labels, types, ["a", "b"], ks=(0, 1, 8), trials=3000, folds=3, seed=0
    )
    assert report.oracle_macro > 0.75
    assert abs(report.monolithic_macro - 0.5) < 0.08
    acc = [p.macro_accuracy for p in report.points]
    assert acc[0] == pytest.approx(0.5, abs=0.03)
    assert acc[0] < acc[1] < acc[2] <= report.oracle_macro + 0.03
    assert report.points[2].macro_identified > 0.9
    text = render_headroom(report)
    assert "| 8 |" in text and "per-type oracle" in text
    assert report.to_dict()["points"][2]["macro_accuracy"] == pytest.approx(acc[2])


def test_headroom_rejects_nan_features_and_single_type() -> None:
    x = np.zeros((10, 2))
    x[3, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        personalisation_headroom(x, np.zeros(10), np.repeat([0, 1], 5), ["a", "b"])
    with pytest.raises(ConfigError, match="at least 2 user types"):
        personalisation_headroom(np.zeros((10, 2)), np.zeros(10), np.zeros(10), ["a"])


@pytest.mark.parametrize("pool_size", [6, 5000])  # the small-pool and the rejection path
def test_draw_distinct_rows_are_distinct_and_the_last_entry_is_uniform(pool_size: int) -> None:
    from fedvpa.evaluation.headroom import draw_distinct

    rows = draw_distinct(pool_size, 4, 30000, np.random.default_rng(0))
    assert rows.shape == (30000, 4)
    assert (np.sort(rows, axis=1)[:, 1:] != np.sort(rows, axis=1)[:, :-1]).all()
    if pool_size == 6:
        # Every index is the last entry (the query) equally often: 1/6 each.
        share = np.bincount(rows[:, -1], minlength=6) / len(rows)
        assert share == pytest.approx(np.full(6, 1 / 6), abs=0.01)
    with pytest.raises(ValueError, match="distinct"):
        draw_distinct(3, 4, 1, np.random.default_rng(0))


def test_a_context_larger_than_a_type_is_refused_before_fitting(monkeypatch) -> None:
    import fedvpa.evaluation.headroom as headroom

    def must_not_fit(*args, **kwargs):
        raise AssertionError("probes fitted before the k check")

    monkeypatch.setattr(headroom, "cross_fitted_probabilities", must_not_fit)
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ConfigError, match="smallest type has 10"):
        labels = np.tile([0, 1], 10)  # 5 of each label per type: enough for the probes
        personalisation_headroom(x, labels, np.repeat([0, 1], 10), ["a", "b"], ks=(0, 10))


def test_too_few_pairs_of_one_label_names_the_type() -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))
    labels = np.ones(40)
    labels[:5] = 0  # type "a": 5 pairs where B is preferred; type "b": none
    with pytest.raises(ConfigError, match="'b' has 0 pairs where B is preferred"):
        personalisation_headroom(x, labels, np.repeat([0, 1], 20), ["a", "b"], ks=(0,), folds=5)


def test_federation_ideal_reads_only_what_a_federated_method_trains_on() -> None:
    """The matched ideal fits its probes on the seen clients' labelled pairs only: flipping
    every test label turns each accuracy a into exactly 1 - a (no probe saw a test pair), and
    with twelve labelled pairs a client's type is read almost as well as if it were known."""
    from dataclasses import replace as dc_replace

    from helpers import make_toy_clients

    from fedvpa.evaluation.headroom import federation_ideal

    clients = make_toy_clients(num_clients=40, pairs=24, dim=16, num_test=6, num_unseen=8)
    ideal = federation_ideal(clients, seed=0)
    assert set(ideal) == {"seen", "unseen", "seen_known_type", "unseen_known_type"}
    assert ideal["seen_known_type"] > 0.85
    assert ideal["seen"] > ideal["seen_known_type"] - 0.05
    assert ideal["unseen"] > 0.6  # four context pairs only

    def flip(pairs):
        return dc_replace(pairs, label=1 - pairs.label)

    flipped = [dc_replace(c, test=flip(c.test)) for c in clients]
    other = federation_ideal(flipped, seed=0)
    for key, value in ideal.items():
        assert other[key] == pytest.approx(1 - value, abs=1e-12), key
    with pytest.raises(ConfigError, match="seen client"):
        federation_ideal([c for c in clients if c.unseen])


def test_em_from_the_types_starts_at_the_matched_ideal_and_keeps_types_the_labels_tell_apart() -> (
    None
):
    from helpers import make_toy_clients

    from fedvpa.evaluation.headroom import em_from_types, federation_ideal

    clients = make_toy_clients(num_clients=40, pairs=24, dim=16, num_test=6, num_unseen=8)
    history = em_from_types(clients, steps=3, seed=0)
    assert [row["step"] for row in history] == [0, 1, 2, 3]
    ideal = federation_ideal(clients, seed=0)
    # step 0: the true types' probes with the C each type's cross-validation picks, which is
    # how the matched ideal fits them, so the same figures
    assert history[0]["seen"] == pytest.approx(ideal["seen"], abs=1e-12)
    assert history[0]["unseen"] == pytest.approx(ideal["unseen"], abs=1e-12)
    assert history[0]["agreement"] == 1.0 and history[0]["smallest_share"] == 0.5
    # two types that disagree on half the pairs, 18 labelled pairs a client: the data's own
    # likelihood keeps them (every client stays with its type, accuracy stays)
    for row in history[1:]:
        assert row["agreement"] == 1.0
        assert row["seen"] > history[0]["seen"] - 0.03


def test_em_from_the_types_cannot_keep_apart_two_types_that_prefer_the_same() -> None:
    """Half the clients of type 0 are labelled type 2: their labels cannot tell them from the
    other half, so after one step the responsibilities of those clients split between the two
    components and no longer single out the labelled type for all of them."""
    from dataclasses import replace as dc_replace

    from helpers import make_toy_clients

    from fedvpa.evaluation.headroom import em_from_types

    clients = make_toy_clients(num_clients=48, pairs=24, dim=16, num_test=6)
    relabelled = [
        dc_replace(c, type_index=2) if c.type_index == 0 and c.client_id % 4 == 0 else c
        for c in clients
    ]
    history = em_from_types(relabelled, steps=2, seed=0)
    assert history[0]["agreement"] == 1.0
    assert history[-1]["agreement"] < 0.9
    with pytest.raises(ConfigError, match="must be >= 0"):
        em_from_types(relabelled, steps=-1)


def test_em_from_the_types_refuses_a_type_with_one_label_and_a_lost_component_is_indifferent() -> (
    None
):
    from dataclasses import replace as dc_replace

    from helpers import make_toy_clients

    from fedvpa.evaluation.headroom import _Indifferent, em_from_types

    clients = make_toy_clients(num_clients=12, pairs=12, dim=8, num_test=4)
    one_label = [
        dc_replace(c, context=dc_replace(c.context, label=c.context.label * 0 + 1),
                   train=dc_replace(c.train, label=c.train.label * 0 + 1))
        if c.type_index == 1 else c
        for c in clients
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="user type 1 has fewer than two labels"):
        em_from_types(one_label, steps=1)
    # a component that lost every client says 0.5: it adds nothing to any log-likelihood ratio
    p = _Indifferent().predict_proba(np.zeros((3, 8)))
    assert p.shape == (3, 2) and (p == 0.5).all()
