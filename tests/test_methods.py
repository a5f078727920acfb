"""The methods' maths through an in-process loop: learning, private state, aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_toy_clients
from method_loop import run_in_process

from fedvpa.federation.registry import create_method
from fedvpa.methods.aggregation import weighted_average
from fedvpa.methods.reward_heads import balanced_head_assignment

DIM = 16
SMALL = {"input_dim": DIM, "hidden_dim": 32, "feature_dim": 16, "latent_dim": 8}


def _method(name: str, steps: int = 10, **model):
    return create_method(
        name, {"model": {**SMALL, **model}, "local": {"local_steps": steps, "num_rounds": 10}}
    )


@pytest.fixture(scope="module")
def clients():
    torch.set_num_threads(1)
    return make_toy_clients(
        num_clients=16, pairs=24, dim=DIM, seed=3, num_context=8, num_test=6, num_unseen=4
    )


def test_weighted_average_matches_hand_computation():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32)}
    out = weighted_average([(a, 1.0), (b, 3.0)])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    assert out["w"].dtype == np.float32
    with pytest.raises(ValueError):
        weighted_average([])


def test_weighted_average_is_order_independent():
    rng = np.random.default_rng(0)
    items = [({"w": rng.normal(size=50).astype(np.float32)}, float(i + 1)) for i in range(7)]
    forward = weighted_average(items)["w"]
    backward = weighted_average(items[::-1])["w"]
    assert np.array_equal(forward, backward)


def test_balanced_head_assignment_prefers_low_loss_and_balances():
    losses = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    heads = balanced_head_assignment(losses)
    assert sorted(np.bincount(heads, minlength=2).tolist()) == [2, 2]
    assert heads[3] == 1 and heads[0] == 0


@pytest.mark.parametrize("name", ["fedavg-bt", "fedbiscuit", "fedvpl", "fedvpa-gp"])
def test_every_method_learns_the_shared_axis(name, clients):
    _, _, report = run_in_process(_method(name), clients, rounds=8, per_round=6)
    assert report["seen"]["macro"] > 0.6, report


def test_fedvpa_gp_keeps_private_pi_and_fills_the_prior_store(clients):
    method = _method(
        "fedvpa-gp",
        steps=5,
        prior_warmup_rounds=1,
        ortho_warmup_rounds=1,
        prior_max_age=1,  # the paper's store: last round's participants
        num_prototypes=2,
    )
    state, private, _ = run_in_process(method, clients, rounds=4, per_round=6)
    assert state.extra["prior_mu"].shape == (6, SMALL["latent_dim"])
    # labels of the last round's clients (located under its shared model), one centroid each
    assert state.extra["labels"].shape[0] == len(state.extra["label_ids"]) == 6
    assert state.extra["centroids"].shape == (2, SMALL["latent_dim"])
    # pi is private: it lives in the client's state, never in the shared arrays
    assert not any("pi" in key for key in state.arrays)
    trained_twice = [s for s in private.values() if s["rounds_trained"][0] >= 2]
    assert trained_twice and all(s["pi_ids"].size > 0 for s in trained_twice)
    sizes = np.bincount(state.extra["labels"], minlength=2)
    assert sizes.min() >= 1  # cluster_min_share = 0.5 of 6 clients in 2 groups: at least 1


def test_fedvpl_sends_no_prior_components(clients):
    method = _method("fedvpl")
    state = method.init_server_state(0)
    payload = method.client_payload(state, 0, 1)
    assert "prior_mu" not in payload


def test_mixture_prior_waits_for_its_warmup(clients):
    method = _method("fedvpa-gp", prior_warmup_rounds=3, prior_max_age=1)
    state, _, _ = run_in_process(method, clients, rounds=2, per_round=4)
    assert "prior_mu" not in method.client_payload(state, 0, 3)
    assert method.client_payload(state, 0, 4)["prior_mu"].shape[0] == 4


def test_unlabelled_client_takes_the_nearest_centroid(clients):
    method = _method("fedvpa-gp", prior_warmup_rounds=0, ortho_warmup_rounds=0)
    model = method._model(method.init_server_state(0).arrays)
    client = clients[0]
    from fedvpa.training.local import infer_posterior

    mu = infer_posterior(model, client.labelled)[0].numpy()
    centroids = np.stack([mu + 100.0, mu + 0.01]).astype(np.float32)
    label = method._fallback_label(model, client, {"centroids": centroids})
    assert label == 1
    # before any clustering: the nearest prototype
    nearest = int(model.prototypes.nearest(torch.as_tensor(mu)[None])[0])
    assert method._fallback_label(model, client, {}) == nearest


def test_fedvpa_gp_labels_the_round_from_where_the_shared_model_puts_it():
    method = _method("fedvpa-gp", ortho_warmup_rounds=2, num_prototypes=2)
    assert not method.needs_locate(2) and method.needs_locate(3)
    assert not _method("fedvpl").needs_locate(50) and not _method("fedvpl+gp").needs_locate(50)
    state = method.init_server_state(0)
    rng = np.random.default_rng(0)
    axis = np.eye(8, dtype=np.float32)[0] * 3.0
    ids = [0, 1, 2, 3, 4, 5]  # an uneven 4:2 split of the two groups
    located = {
        c: {"mu": (axis if c < 4 else -axis) + rng.normal(0, 0.1, 8).astype(np.float32)}
        for c in ids
    }
    planned = method.plan_round(state, ids, 3, located)
    labels = [int(method.client_payload(planned, c, 3)["proto_label"][0]) for c in ids]
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
    assert int(method.client_payload(planned, 99, 3)["proto_label"][0]) == -1  # not located
    # First pull round: the prototypes become the orthogonal radius-s set nearest the clusters.
    protos = planned.arrays["prototypes.weight"]
    assert not np.allclose(protos, state.arrays["prototypes.weight"])
    np.testing.assert_allclose(protos @ protos.T, 25.0 * np.eye(2), atol=1e-3)
    assert protos[labels[0]] @ axis > 0 > protos[labels[4]] @ axis
    # Later rounds keep them, and a round nobody located leaves no stale labels behind.
    again = method.plan_round(planned, ids, 4, located)
    np.testing.assert_array_equal(again.arrays["prototypes.weight"], protos)
    empty = method.plan_round(again, ids, 5, None)
    assert int(method.client_payload(empty, 0, 5)["proto_label"][0]) == -1
    # The paper's strict balance forces the 4:2 round into 3:3 and mislabels one client.
    strict = _method("fedvpa-gp", ortho_warmup_rounds=2, cluster_min_share=1.0, num_prototypes=2)
    forced = strict.plan_round(strict.init_server_state(0), ids, 3, located)
    sizes = np.bincount(forced.extra["labels"], minlength=2)
    assert sizes.tolist() == [3, 3]


def test_latent_first_steps_leave_the_base_untouched(clients):
    from fedvpa.model.config import ModelConfig
    from fedvpa.model.priors import StandardNormalPrior
    from fedvpa.model.vpl import VariationalPreferenceModel
    from fedvpa.training.local import is_latent_parameter, train_local

    cfg = ModelConfig(**{"feature_layers": 2, **SMALL}, use_ortho=False)
    model = VariationalPreferenceModel(cfg, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, StandardNormalPrior(), clients[0], None, cfg, steps=4, latent_first_steps=4)
    after = model.state_dict()
    for name, _ in model.named_parameters():
        changed = not torch.equal(before[name], after[name])
        assert changed == is_latent_parameter(name), name
    # one more full step afterwards moves the base too
    train_local(model, StandardNormalPrior(), clients[0], None, cfg, steps=2, latent_first_steps=1)
    assert not torch.equal(
        before["feature.net.0.weight"], model.state_dict()["feature.net.0.weight"]
    )
    # the freezing is undone: every weight trains again and the server's copy is unaffected
    assert all(p.requires_grad for p in model.parameters())


def test_a_failing_local_round_leaves_no_weight_frozen(clients, monkeypatch):
    """The latent-first steps switch gradients off; an error inside them must not leave a
    reused model with frozen weights (the in-process protocol builds a model per client, but a
    caller holding one across rounds would silently stop training the base)."""
    from fedvpa.model.config import ModelConfig
    from fedvpa.model.priors import StandardNormalPrior
    from fedvpa.model.vpl import VariationalPreferenceModel
    from fedvpa.training import local

    cfg = ModelConfig(**SMALL, use_ortho=False)
    model = VariationalPreferenceModel(cfg, seed=0)

    def boom(*args, **kwargs):
        raise RuntimeError("objective failed")

    monkeypatch.setattr(local, "local_objective", boom)
    with pytest.raises(RuntimeError, match="objective failed"):
        local.train_local(
            model, StandardNormalPrior(), clients[0], None, cfg, steps=4, latent_first_steps=3
        )
    assert all(p.requires_grad for p in model.parameters())


def test_latent_only_steps_keep_one_full_step():
    from fedvpa.methods.local_config import LocalConfig

    assert LocalConfig(local_steps=30, latent_first_steps=25).latent_only_steps == 25
    assert LocalConfig(local_steps=2, latent_first_steps=25).latent_only_steps == 1


def test_read_only_model_is_built_once_per_weights_and_scores_like_a_fresh_one(clients):
    """Evaluation, locate and latent statistics share one model per set of weights (a node
    reads many clients with the same weights); weights changed in place rebuild it, and the
    numbers are those of a model built afresh."""
    from fedvpa.evaluation.accuracy import evaluate_client
    from fedvpa.training.local import VPLPredictor, infer_posterior

    method = _method("fedvpa-gp")
    arrays = method.init_server_state(0).arrays
    first = method.predictor(arrays)
    assert method.predictor(arrays).model is first.model  # no second build
    method.locate(arrays, clients[0])
    method.latent_stats(arrays, clients[1])
    assert method.predictor(arrays).model is first.model
    fresh = method._model(arrays)
    fresh.eval()
    for client in clients[:4]:
        got, want = evaluate_client(first, client), evaluate_client(VPLPredictor(fresh), client)
        assert got == want
        mu, _ = infer_posterior(fresh, client)
        np.testing.assert_array_equal(method.latent_stats(arrays, client)["mu"], mu.numpy())
    key = next(iter(arrays))
    arrays[key] += 1.0  # in place: the cache must notice
    assert method.predictor(arrays).model is not first.model


def _pairs(emb_a, emb_b, label):
    from fedvpa.embeddings.tensors import PairTensors

    return PairTensors(
        emb_a=torch.as_tensor(emb_a, dtype=torch.float32),
        emb_b=torch.as_tensor(emb_b, dtype=torch.float32),
        label=torch.as_tensor(label, dtype=torch.float32),
    )


def test_population_latent_is_the_closed_form_posterior_mean():
    """Two points, one pair: weights n_j * P(choice | z_j), normalised; no pairs: the prior
    mean; many pairs that only one point explains: that point."""
    from fedvpa.training.local import population_latent

    method = _method("fedvpa-gp")
    model = method._model(method.init_server_state(0).arrays)
    model.eval()
    mu = torch.tensor([[1.0] + [0.0] * 7, [-1.0] + [0.0] * 7])
    n = torch.tensor([1.0, 3.0])
    none = _pairs(torch.zeros(0, DIM), torch.zeros(0, DIM), torch.zeros(0))
    torch.testing.assert_close(population_latent(model, none, mu, n), (n @ mu) / n.sum())

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, DIM, generator=gen), torch.randn(1, DIM, generator=gen)
    one = _pairs(a, b, [1.0])
    with torch.no_grad():
        p = torch.sigmoid(model.logit(a, b, mu.unsqueeze(1)))[:, 0]  # P(A | z_j)
        w = n * p / (n * p).sum()
        got = population_latent(model, one, mu, n)
    torch.testing.assert_close(got, w @ mu)

    # pairs whose choice follows the sign of the logit at point 0 and opposes it at point 1
    a, b = torch.randn(40, DIM, generator=gen), torch.randn(40, DIM, generator=gen)
    with torch.no_grad():
        gap = model.logit(a, b, mu[0]) - model.logit(a, b, mu[1])
    many = _pairs(a, b, (gap > 0).float())
    with torch.no_grad():
        got = population_latent(model, many, mu * 50, n)  # far apart: the choices decide
    torch.testing.assert_close(got, mu[0] * 50, atol=1e-3, rtol=1e-4)


def test_population_inference_sends_the_prior_rows_and_reads_z_from_them(clients):
    from fedvpa.errors import ConfigError
    from fedvpa.training.local import PopulationPredictor, VPLPredictor, context_pairs

    method = _method("fedvpa-gp", steps=3, prior_warmup_rounds=1, latent_inference="population")
    state = method.init_server_state(0)
    before = method.evaluation_arrays(state)
    assert "population_mu" not in before  # nothing reported yet: the encoder is read
    assert isinstance(method.predictor(before), VPLPredictor)
    state, _, _ = run_in_process(method, clients, rounds=2, per_round=6)
    arrays = method.evaluation_arrays(state)
    np.testing.assert_array_equal(arrays["population_mu"], state.extra["prior_mu"])
    np.testing.assert_array_equal(arrays["population_n"], state.extra["prior_n"])
    predictor = method.predictor(arrays)
    assert isinstance(predictor, PopulationPredictor)
    # the shared weights alone build the model: the same one the encoder path reads
    weights = {k: v for k, v in arrays.items() if not k.startswith("population_")}
    assert predictor.model is method.predictor(weights).model
    unseen = next(c for c in clients if c.unseen)
    z = predictor.latent(unseen)
    pop = torch.as_tensor(state.extra["prior_mu"])
    from fedvpa.training.local import population_latent

    want = population_latent(
        predictor.model, context_pairs(unseen), pop, torch.as_tensor(state.extra["prior_n"])
    )
    torch.testing.assert_close(z, want)
    stats = method.latent_stats(arrays, unseen)
    assert stats["mu"].shape == (SMALL["latent_dim"],)
    # the evaluation reply also carries the z it read, for stage 2's group z
    np.testing.assert_array_equal(stats["z"], want.detach().numpy())
    assert "z" not in method.latent_stats(weights, unseen)  # the encoder is read: no z
    # given the evaluation's predictor (evaluate_step), the same statistics without a rebuild
    reused = method.latent_stats(arrays, unseen, predictor)
    for key in ("mu", "logvar", "z"):
        np.testing.assert_array_equal(reused[key], stats[key])

    assert _method("fedvpa-gp", latent_inference="auto").population_inference
    assert not _method("fedvpl", latent_inference="auto").population_inference
    assert _method("fedvpl", latent_inference="auto").latent_reading == "prior"
    assert not _method("fedvpa-gp", latent_inference="encoder").population_inference
    # FedVPL keeps its posteriors unless asked for the population: then it reports them
    assert _method("fedvpl").stats_shapes(1) == {}
    asked = _method("fedvpl", latent_inference="population")
    assert asked.population_inference and set(asked.stats_shapes(1)) == {"mu", "sigma2"}
    with pytest.raises(ConfigError, match="latent_inference"):
        _method("fedvpl", latent_inference="nearest")


def test_standard_normal_draws_are_fixed_and_standard():
    from fedvpa.errors import ConfigError
    from fedvpa.model.priors import standard_normal_draws

    draws = standard_normal_draws(8, 4096)
    assert draws.shape == (4096, 8) and draws.dtype == torch.float32
    assert torch.isfinite(draws).all()
    torch.testing.assert_close(draws, standard_normal_draws(8, 4096))  # the same points
    assert not torch.equal(draws, standard_normal_draws(8, 4096, seed=1))
    # quasi-random: the moments sit far closer to N(0, I)'s than 4,096 random draws' would
    # (sd of a random mean about 0.016)
    assert draws.mean(0).abs().max() < 2e-3
    assert (draws.std(0) - 1).abs().max() < 5e-3
    cov = torch.cov(draws.T)
    assert (cov - torch.diag(torch.diagonal(cov))).abs().max() < 5e-3
    with pytest.raises(ConfigError):
        standard_normal_draws(0, 10)


def test_prior_inference_is_the_bayes_posterior_mean_under_n01():
    """With one latent dimension the posterior mean under the model's N(0, 1) prior is a 1-D
    integral: the prior draws' importance-weighted mean must match it by quadrature."""
    from fedvpa.training.local import population_latent

    method = _method(
        "fedvpl", latent_dim=1, num_prototypes=1, latent_inference="prior", prior_draws=4096
    )
    model = method._model(method.init_server_state(0).arrays)
    model.eval()
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, DIM, generator=gen), torch.randn(6, DIM, generator=gen)
    pairs = _pairs(a, b, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        grid = torch.linspace(-8, 8, 20001).unsqueeze(1)
        logits = model.logit(a, b, grid.unsqueeze(1))  # [G, n]
        loglik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, pairs.label.expand_as(logits), reduction="none"
        ).sum(-1)
        log_post = loglik - grid[:, 0] ** 2 / 2
        want = (torch.softmax(log_post.double(), 0) * grid[:, 0].double()).sum()
        draws, weights = method.inference_points({})
        got = population_latent(model, pairs, draws, weights)
    assert draws.shape == (4096, 1) and torch.equal(weights, torch.ones(4096))
    assert abs(float(got[0]) - float(want)) < 0.01, (float(got[0]), float(want))
    assert abs(float(want)) > 0.05  # the pairs moved it: the check is not at the prior mean


def test_fedvpl_reads_z_under_its_prior_without_sending_anything(clients):
    """FedVPL's default ("auto") reads ``z`` as the posterior mean over the prior's fixed
    draws: no posterior travels (the statistics stay empty), the evaluation reply carries the
    ``z`` it read (stage 2's group ``z``), and the Laplace encoder keeps its own reading."""
    from fedvpa.model.priors import standard_normal_draws
    from fedvpa.training.local import PopulationPredictor, context_pairs, population_latent

    method = _method("fedvpl", steps=3)
    assert method.latent_reading == "prior" and method.stats_shapes(1) == {}
    state, _, _ = run_in_process(method, clients, rounds=2, per_round=6)
    arrays = method.evaluation_arrays(state)
    assert not any(k.startswith("population_") for k in arrays)  # nothing extra is sent
    predictor = method.predictor(arrays)
    assert isinstance(predictor, PopulationPredictor)
    unseen = next(c for c in clients if c.unseen)
    draws = standard_normal_draws(SMALL["latent_dim"], method.cfg.prior_draws)
    want = population_latent(predictor.model, context_pairs(unseen), draws, torch.ones(len(draws)))
    torch.testing.assert_close(predictor.latent(unseen), want)
    stats = method.latent_stats(arrays, unseen, predictor)
    np.testing.assert_array_equal(stats["z"], want.detach().numpy())

    assert _method("fedvpl", latent_inference="encoder").inference_points(arrays) is None
    laplace = _method("fedvpl", encoder="laplace")
    assert laplace.latent_reading == "encoder" and laplace.inference_points(arrays) is None
    assert _method("fedvpl", encoder="laplace", latent_inference="prior").latent_reading == "prior"
    # the mixture prior is not N(0, I): refused in one line, not read against the wrong prior
    from fedvpa.errors import ConfigError

    with pytest.raises(ConfigError, match="latent_inference"):
        _method("fedvpa-gp", latent_inference="prior")
