"""``batched-clients``: a node's clients trained in one vectorised pass (``training/batched.py``).

The pass must be ``train_local``'s algorithm: the same context/query splits and noise from each
client's own generator, each client's gradient reaching only its own weights. With SGD the two
agree to float rounding (1e-5 here). With Adam they agree on the random numbers but not to the
bit: Adam divides by the gradient's own size, so a rounding difference in a near-zero gradient
element becomes a step of about ``lr``, which is why the setting is off by default.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import make_toy_clients
from method_loop import run_in_process

from fedvpa.methods.base import TrainRequest
from fedvpa.methods.variational import make_variant
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import SetEncoder
from fedvpa.model.priors import FederatedMixturePrior, StandardNormalPrior
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.protocol.client import train_step, train_steps
from fedvpa.training.batched import ClientJob, batch_reason, train_local_batched
from fedvpa.training.local import make_optimiser, train_local

DIM = 16
J = 7


def _components() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return (
        torch.randn(J, 8, generator=gen),
        torch.rand(J, 8, generator=gen) + 0.5,
        torch.rand(J, generator=gen) + 1.0,
    )


def _prior(kind: str, i: int, estimator: str = "mc"):
    if kind == "standard":
        return StandardNormalPrior()
    mu, var, n = _components()
    return FederatedMixturePrior(
        mu,
        var,
        n,
        tau=0.7,
        estimator=estimator,
        num_samples=8,
        exclude=(i % J) if i % 2 else None,  # clients differ in exclusion and private pi
        pi_init=torch.randn(J, generator=torch.Generator().manual_seed(i)),
        var_floor=1.0,
    )


@pytest.mark.parametrize(
    ("prior", "labels", "estimator", "encoder", "read_weight"),
    [
        ("standard", False, "mc", "attention", 0.0),
        ("standard", False, "mc", "attention", 1.0),  # the read term, mapped too
        ("mixture", True, "mc", "attention", 0.0),
        ("mixture", True, "upper-bound", "attention", 0.0),
        ("mixture", False, "mc", "laplace", 0.0),
    ],
)
def test_batched_pass_is_train_local_per_client(prior, labels, estimator, encoder, read_weight):
    cfg = ModelConfig(
        input_dim=DIM,
        kl_estimator=estimator,
        encoder=encoder,
        read_weight=read_weight,
        prior_draws=256,
    )
    # unequal pair counts, so the views of different clients pad differently
    clients = [
        *make_toy_clients(3, pairs=14, dim=DIM, seed=1),
        *make_toy_clients(3, pairs=9, dim=DIM, seed=2, num_context=3, num_test=2),
    ]
    model = VariationalPreferenceModel(cfg, seed=3)
    before = copy.deepcopy(model.state_dict())
    kw = {
        "steps": 8,
        "lr": 0.05,
        "batch_size": 4,
        "latent_first_steps": 5,
        "num_groups": 3,
        "optimiser_kind": "sgd",
    }
    label = (lambda i: i % 3) if labels else (lambda i: None)
    jobs = [
        ClientJob(c, _prior(prior, i, estimator), label(i), 100 + i) for i, c in enumerate(clients)
    ]
    assert batch_reason(cfg, 0.0, jobs) is None
    batched = train_local_batched(model, jobs, cfg, **kw)
    for key, value in model.state_dict().items():  # the template's weights are untouched
        assert torch.equal(value, before[key])
    for i, (client, out) in enumerate(zip(clients, batched, strict=True)):
        alone = copy.deepcopy(model)
        own_prior = _prior(prior, i, estimator)
        result = train_local(alone, own_prior, client, label(i), cfg, seed=100 + i, **kw)
        for key, value in alone.shared_state().items():
            np.testing.assert_allclose(out.arrays[key], value, rtol=0, atol=1e-5, err_msg=key)
        torch.testing.assert_close(out.result.mu_bar, result.mu_bar, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.result.sigma2_bar, result.sigma2_bar, rtol=1e-4, atol=0)
        assert out.result.num_examples == result.num_examples
        assert set(out.result.metrics) == set(result.metrics)
        assert ("read_nll" in result.metrics) == (read_weight > 0)
        for key, value in result.metrics.items():
            assert out.result.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        if prior == "mixture":
            torch.testing.assert_close(
                out.pi_logits, own_prior.pi_logits.detach(), rtol=0, atol=1e-5
            )
        else:
            assert out.pi_logits is None


def test_fused_encoder_read_is_the_two_reads():
    """The batched step reads a view's choices and their reversal in one encoder call; that is
    the odd encoder's two calls up to rounding, padding included (sets of unequal length)."""
    cfg = ModelConfig(input_dim=DIM, odd_encoder=True)
    model = VariationalPreferenceModel(cfg, seed=4)
    gen = torch.Generator().manual_seed(0)
    oriented = torch.randn(5, 6, cfg.feature_dim, generator=gen)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[1], [6], [3], [2], [5]])
    mu, logvar = model.encode(oriented, mask)
    mu_f, logvar_f = model.encode(oriented, mask, fused=True)
    torch.testing.assert_close(mu_f, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(logvar_f, logvar, rtol=0, atol=1e-6)
    mu_rev, _ = model.encode(-oriented, mask, fused=True)  # still odd
    torch.testing.assert_close(mu_rev, -mu_f, rtol=0, atol=1e-6)


def test_flat_attention_is_multihead_attention_in_values_and_gradients():
    """The batched step's encoder computes its attention on flat rows (``_flat_attention``)
    instead of calling ``nn.MultiheadAttention``: the same outputs and the same gradients for
    every weight and the input, padded positions included, up to rounding."""
    enc = SetEncoder(16, 4, heads=4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, 16, generator=gen)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[1], [6], [3], [2], [5]])
    weights = torch.randn(2, 5, 4, generator=gen)
    results = []
    for flat in (False, True):
        enc.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_(True)
        mu, logvar = enc(inp, mask, flat_attention=flat)
        ((mu * weights[0]).sum() + (logvar * weights[1]).sum()).backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
        results.append((mu.detach(), logvar.detach(), inp.grad, grads))
    (mu, logvar, gx, grads), (mu_f, logvar_f, gx_f, grads_f) = results
    torch.testing.assert_close(mu_f, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(logvar_f, logvar, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_f, gx, rtol=0, atol=1e-6)
    assert grads_f.keys() == grads.keys() and "attn.in_proj_weight" in grads
    for name in grads:
        torch.testing.assert_close(grads_f[name], grads[name], rtol=0, atol=1e-5, msg=name)


def test_batched_adam_draws_the_same_random_numbers():
    """With Adam and a learning rate too small to move anything, the per-step losses (metrics)
    depend only on the splits and noise: they must match ``train_local``'s."""
    cfg = ModelConfig(input_dim=DIM, prior="mixture")
    clients = make_toy_clients(4, pairs=12, dim=DIM, seed=4)
    model = VariationalPreferenceModel(cfg, seed=0)
    kw = {"steps": 6, "lr": 1e-12, "batch_size": 4, "latent_first_steps": 3}
    jobs = [ClientJob(c, _prior("mixture", i), i % 2, 7 + i) for i, c in enumerate(clients)]
    batched = train_local_batched(model, jobs, cfg, **kw)
    for i, (client, out) in enumerate(zip(clients, batched, strict=True)):
        result = train_local(
            copy.deepcopy(model), _prior("mixture", i), client, i % 2, cfg, seed=7 + i, **kw
        )
        for key, value in result.metrics.items():
            assert out.result.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_batch_reason_names_what_cannot_be_batched():
    cfg = ModelConfig(input_dim=DIM)
    clients = make_toy_clients(3, pairs=10, dim=DIM, seed=0)
    jobs = [ClientJob(c, StandardNormalPrior(), None, i) for i, c in enumerate(clients)]
    assert batch_reason(cfg, 0.0, jobs) is None
    assert batch_reason(cfg, 0.0, jobs[:1]) == "one client"
    assert "dropout" in batch_reason(ModelConfig(input_dim=DIM, dropout=0.1), 0.0, jobs)
    assert "proximal" in batch_reason(cfg, 0.01, jobs)
    mixed = [*jobs[:2], ClientJob(clients[2], _prior("mixture", 2), None, 2)]
    assert batch_reason(cfg, 0.0, mixed) == "the clients' priors differ"
    labelled = [*jobs[:2], ClientJob(clients[2], StandardNormalPrior(), 1, 2)]
    assert "prototype label" in batch_reason(cfg, 0.0, labelled)
    mu, var, n = _components()
    other = FederatedMixturePrior(mu + 1.0, var, n)
    different = [ClientJob(clients[0], _prior("mixture", 0), None, 0)]
    different.append(ClientJob(clients[1], other, None, 1))
    assert batch_reason(cfg, 0.0, different) == "the clients' priors differ"
    with pytest.raises(ValueError, match="cannot train as one batch: one client"):
        train_local_batched(VariationalPreferenceModel(cfg), jobs[:1], cfg)


def _method(batched: bool):
    model = {
        "input_dim": DIM,
        "prior_warmup_rounds": 2,
        "ortho_warmup_rounds": 2,
        "ortho_ramp_rounds": 2,
    }
    local = {"local_steps": 8, "latent_first_steps": 4, "batched_clients": batched}
    return make_variant("fedvpa-gp", model, local)


def test_train_steps_batches_only_when_asked(caplog):
    """Off (the default) the runtime trains one client at a time, to the bit; on, the method
    trains them together, and a client that cannot train fails alone (the fallback is logged
    once, not once a round)."""
    clients = make_toy_clients(4, pairs=12, dim=DIM, seed=0)
    plain, fast = _method(False), _method(True)
    arrays = plain.init_server_state(0).arrays
    requests = [TrainRequest(c, {}, {}, 10 + i) for i, c in enumerate(clients)]
    assert plain.train_batch(arrays, requests, 1) is None
    assert fast.train_batch(arrays, requests[:1], 1) is None
    together = fast.train_batch(arrays, requests, 1)
    assert together is not None and len(together) == 4
    for req, out in zip(requests, train_steps(plain, arrays, requests, 1), strict=True):
        update, _ = train_step(plain, arrays, {}, req.client, {}, 1, req.seed)
        assert not isinstance(out, Exception)
        for key, value in update.arrays.items():
            assert np.array_equal(out[0].arrays[key], value)
    broken = copy.copy(clients[1])
    broken.train = broken.train.subset(torch.arange(0))
    broken.context = broken.context.subset(torch.arange(1))  # 1 labelled pair: cannot train
    mixed = [*requests[:1], TrainRequest(broken, {}, {}, 11), *requests[2:]]
    with caplog.at_level("WARNING", logger="fedvpa.methods.variational"):
        results = train_steps(fast, arrays, mixed, 1)
        train_steps(fast, arrays, mixed, 2)
    assert isinstance(results[1], Exception) and "labelled pairs" in str(results[1])
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 1)
    said = [r.getMessage() for r in caplog.records if "batched-clients" in r.getMessage()]
    assert said == [
        "batched-clients: a client has fewer than 2 labelled pairs; such clients train one at "
        "a time (said once here)"
    ]


def test_a_setting_that_prevents_batching_is_said_at_start_up(capsys):
    """With ``batched-clients`` on, dropout, FedProx, a validation share or a method without a
    batched pass used to train one client at a time without a word."""
    from fedvpa.methods.reward_heads import FedAvgBT

    local = {"batched_clients": True}
    assert _method(True).batching_note() is None
    assert _method(False).batching_note() is None
    cases = {
        "dropout": make_variant("fedvpl", {"input_dim": DIM, "dropout": 0.1}, local),
        "proximal": make_variant("fedvpl", {"input_dim": DIM}, {**local, "prox_mu": 0.01}),
        "validation share": make_variant(
            "fedvpa-gp", {"input_dim": DIM}, {**local, "validation_share": 0.25}
        ),
        "no batched pass": FedAvgBT({"input_dim": DIM}, local),
    }
    for words, method in cases.items():
        note = method.batching_note()
        assert note is not None and words in note and "one at a time" in note, note
    assert FedAvgBT({"input_dim": DIM}, {}).batching_note() is None
    # what `fedvpa run` and `fedvpa compare` print before the first round, one line a method
    from fedvpa.experiment import ExperimentConfig
    from fedvpa.runner import print_method_notes

    flat = {"batched-clients": True, "dropout": 0.1}
    print_method_notes(ExperimentConfig.from_flat(flat), ["fedvpa-gp", "fedavg-bt"], DIM)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "dropout" in lines[0] and "fedavg-bt" in lines[1], lines


def test_batched_run_learns_like_the_plain_run():
    """A whole in-process FedVPA-GP run (mixture prior, labels, locate) with the clients of
    each round trained together: not the same bits, the same learning."""
    clients = make_toy_clients(24, pairs=14, dim=DIM, seed=1, num_unseen=4)
    reports = {}
    for batched in (False, True):
        _, private, report = run_in_process(_method(batched), clients, rounds=8, per_round=8)
        reports[batched] = report
        assert all(int(s["rounds_trained"][0]) >= 1 for s in private.values())
    plain, fast = reports[False]["seen"]["macro"], reports[True]["seen"]["macro"]
    assert fast > 0.65
    assert abs(fast - plain) < 0.1


@pytest.mark.slow
def test_flower_nodes_train_their_clients_together(tmp_path):
    """On Flower's simulation engine, nodes of three clients with ``batched-clients``: every
    round's replies arrive (the ClientApp hands the node's clients to ``train_batch``), and the
    run learns like the same run one client at a time (in process, which gives the Flower run's
    numbers: ``test_federation.py``)."""
    from fedvpa.config import FederationSettings
    from fedvpa.embeddings.pipeline import save_client_tensors
    from fedvpa.federation.run_config import FederationConfig
    from fedvpa.federation.runtime import run_federated

    clients = make_toy_clients(12, pairs=14, dim=DIM, seed=1, num_unseen=2)
    save_client_tensors(clients, tmp_path / "clients.pt")
    config = FederationConfig(
        settings=FederationSettings(
            method="fedvpa-gp",
            num_server_rounds=4,
            clients_per_round=6,
            eval_every=4,
            seed=2,
            clients_per_node=3,
            client_timeout=600.0,
        ),
        method_kwargs=_method(True).effective_config(),
        data_path=str(tmp_path / "clients.pt"),
        run_dir=str(tmp_path / "run"),
        num_clients=len(clients),
    )
    fast = run_federated(config, flwr_home=tmp_path / "flwr_home")["eval"]["eval/seen/macro"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [row["errors"] for row in history] == [0, 0, 0, 0]
    assert [row["replies"] for row in history] == [6, 6, 6, 6]
    _, _, report = run_in_process(_method(False), clients, rounds=4, per_round=6, seed=2)
    plain = report["seen"]["macro"]
    assert abs(fast - plain) < 0.15, (plain, fast)


def test_fused_adam_takes_the_foreach_steps():
    """The batched pass's fused Adam (one kernel per tensor) is the update of the one-at-a-time
    path's foreach Adam, up to rounding, including the skipped tensor without a gradient (a
    frozen weight during the latent-first steps)."""
    gen = torch.Generator().manual_seed(0)
    plain = [torch.randn(6, 4, generator=gen).requires_grad_(True) for _ in range(3)]
    fused = [p.detach().clone().requires_grad_(True) for p in plain]
    start = [p.detach().clone() for p in plain]
    by_foreach = make_optimiser("adam", plain, 4e-3)
    by_kernel = make_optimiser("adam", fused, 4e-3, fused=True)
    assert by_kernel.defaults["fused"] and not by_foreach.defaults["fused"]
    for step in range(6):
        for i, (p, q) in enumerate(zip(plain, fused, strict=True)):
            grad = None if (i == 2 and step < 3) else torch.randn(6, 4, generator=gen)
            p.grad = None if grad is None else grad.clone()
            q.grad = None if grad is None else grad.clone()
        by_foreach.step()
        by_kernel.step()
    for p, q in zip(plain, fused, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
    assert all((p - s).abs().max() > 4e-3 for p, s in zip(plain, start, strict=True))
