"""Client-level DP: the mechanisms against closed forms, the accountant against dp-accounting's
own plain Gaussian, and the guard inside real in-process runs of every DP-capable method."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant

from fedvpa.config import FederationSettings
from fedvpa.errors import ConfigError
from fedvpa.methods.base import ClientUpdate
from fedvpa.methods.reward_heads import FedAvgBT, FedBiscuit
from fedvpa.methods.variational import fedvpa_gp, fedvpl
from fedvpa.privacy.accounting import Accountant, epsilon_for, noise_for_epsilon, round_event
from fedvpa.privacy.guard import ClientLevelDP
from fedvpa.privacy.mechanism import (
    clip_update,
    noise_updates,
    privatise_stats,
    update_norm,
)
from fedvpa.protocol.in_process import run_in_process
from tests.helpers import make_toy_clients
from tests.toy_method import ToyMethod

DIM = 16
SMALL = {"latent_dim": 4, "hidden_dim": 16, "input_dim": DIM}
FAST = {"local_steps": 2}


# ------------------------------------------------------------------ mechanisms


def test_clip_update_bounds_the_change_and_keeps_its_direction() -> None:
    ref = {"w": np.ones(3, np.float32), "b": np.zeros(1, np.float32)}
    upd = {"w": np.array([4.0, 1.0, 1.0], np.float32), "b": np.array([4.0], np.float32)}
    clipped = clip_update(upd, ref, 1.0)
    delta = np.concatenate([clipped["w"] - ref["w"], clipped["b"] - ref["b"]])
    assert np.linalg.norm(delta) == pytest.approx(1.0, rel=1e-5)
    expected = np.array([3.0, 0.0, 0.0, 4.0]) / 5.0  # the raw change (3, 0, 0, 4) has norm 5
    np.testing.assert_allclose(delta, expected, rtol=1e-5)
    small = {"w": ref["w"] + 0.1, "b": ref["b"]}
    np.testing.assert_array_equal(clip_update(small, ref, 1.0)["w"], small["w"])  # never scaled up


def test_clip_update_refuses_arrays_it_cannot_clip() -> None:
    ref = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="did not send"):
        clip_update({"v": np.zeros(2, np.float32)}, ref, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        clip_update({"w": np.array([np.nan, 0.0], np.float32)}, ref, 1.0)
    with pytest.raises(ValueError, match="float"):
        clip_update({"w": np.zeros(2, np.int64)}, ref, 1.0)


def test_noise_on_the_mean_has_the_dp_fedavg_scale() -> None:
    # m updates of zeros; array "a" in all m, array "b" in 2 of them: the mean of each carries
    # noise of std z * C / m_k (closed form), whatever the group size.
    z, clip, m, trials = 1.5, 2.0, 8, 3000
    rng = np.random.default_rng(0)
    means_a, means_b = [], []
    for _ in range(trials):
        updates = [{"a": np.zeros(1)} for _ in range(m)]
        updates[0]["b"] = np.zeros(1)
        updates[1]["b"] = np.zeros(1)
        noisy = noise_updates(updates, z, clip, rng)
        means_a.append(np.mean([u["a"][0] for u in noisy]))
        means_b.append(np.mean([u["b"][0] for u in noisy if "b" in u]))
    assert np.std(means_a) == pytest.approx(z * clip / m, rel=0.05)
    assert np.std(means_b) == pytest.approx(z * clip / 2, rel=0.05)


def test_stats_are_clipped_towards_the_standard_normal_in_log_space() -> None:
    stats = {"mu": np.array([3.0, 4.0], np.float32), "sigma2": np.array([np.e, np.e], np.float32)}
    rng = np.random.default_rng(0)
    out = privatise_stats(stats, 1e-9, 1.0, rng, log_scale={"sigma2"})
    # joint vector (3, 4, 1, 1) has norm sqrt(27): scaled to 1
    scale = 1.0 / np.sqrt(27.0)
    np.testing.assert_allclose(out["mu"], [3 * scale, 4 * scale], rtol=1e-5)
    np.testing.assert_allclose(out["sigma2"], np.exp([scale, scale]), rtol=1e-5)
    assert out["sigma2"].dtype == np.float32
    with pytest.raises(ValueError, match="positive"):
        privatise_stats({"sigma2": np.array([0.0])}, 1.0, 1.0, rng, log_scale={"sigma2"})


def test_huge_noise_on_a_log_scale_stat_stays_finite() -> None:
    # Bug: at epsilon = 1 the noise std on log sigma^2 reached tens and exp() overflowed float32
    # to inf (RuntimeWarning: overflow encountered in cast) in the released sigma^2.
    stats = {"mu": np.zeros(8, np.float32), "sigma2": np.ones(8, np.float32)}
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [privatise_stats(stats, 60.0, 3.0, rng, log_scale={"sigma2"}) for _ in range(50)]
    sigma2 = np.stack([o["sigma2"] for o in outs])
    assert np.all(np.isfinite(sigma2)) and np.all(sigma2 > 0)
    assert sigma2.max() == pytest.approx(np.exp(30.0), rel=1e-5)  # clamped, not inf


def test_stats_noise_has_std_z_times_clip() -> None:
    rng = np.random.default_rng(1)
    draws = [privatise_stats({"mu": np.zeros(4)}, 0.7, 2.0, rng)["mu"] for _ in range(2000)]
    assert np.std(np.stack(draws)) == pytest.approx(0.7 * 2.0, rel=0.05)


# ------------------------------------------------------------------ accounting


def _plain_gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    rdp = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    rdp.compose(dp_event.GaussianDpEvent(sigma), rounds)
    return float(rdp.get_epsilon(delta))


def test_full_participation_is_the_plain_gaussian_with_replace_one_sensitivity() -> None:
    # k = N: no amplification; sensitivity 2C, so noise multiplier z acts as z / 2, and s
    # releases besides the update compose into one Gaussian of z / (2 sqrt(1 + s)).
    z, rounds, delta = 3.0, 20, 1e-5
    acc = Accountant(z, num_seen=10, per_round=10, delta=delta)
    for _ in range(rounds):
        acc.compose(2)
    expected = _plain_gaussian_epsilon(z / 2 / np.sqrt(3), rounds, delta)
    assert acc.epsilon() == pytest.approx(expected, rel=1e-6)


def test_epsilon_grows_with_rounds_releases_and_sampling_and_falls_with_noise() -> None:
    base = dict(num_seen=80, per_round=10, delta=1e-5)
    eps = epsilon_for(2.0, **base, releases_in_round=lambda r: 0, num_rounds=20)
    assert epsilon_for(2.0, **base, releases_in_round=lambda r: 0, num_rounds=40) > eps
    assert epsilon_for(2.0, **base, releases_in_round=lambda r: 2, num_rounds=20) > eps
    assert epsilon_for(4.0, **base, releases_in_round=lambda r: 0, num_rounds=20) < eps
    more = dict(base, per_round=40)
    assert epsilon_for(2.0, **more, releases_in_round=lambda r: 0, num_rounds=20) > eps


def test_round_event_is_sampling_without_replacement_of_the_seen_clients() -> None:
    event = round_event(2.0, num_seen=80, per_round=200, releases=1)
    assert isinstance(event, dp_event.SampledWithoutReplacementDpEvent)
    assert (event.source_dataset_size, event.sample_size) == (80, 80)


def test_noise_for_epsilon_is_the_smallest_that_fits() -> None:
    args = dict(num_seen=80, per_round=10, delta=1e-5, releases_in_round=lambda r: 1)
    z = noise_for_epsilon(8.0, **args, num_rounds=30)
    assert epsilon_for(z, **args, num_rounds=30) <= 8.0
    assert epsilon_for(z * 0.97, **args, num_rounds=30) > 8.0
    with pytest.raises(ValueError):
        noise_for_epsilon(0.0, **args, num_rounds=30)


def test_epsilon_if_does_not_charge() -> None:
    acc = Accountant(2.0, 50, 5, 1e-5)
    acc.compose(0)
    before = acc.epsilon()
    ahead = acc.epsilon(extra_round=0)
    assert ahead > before and acc.epsilon() == before


# ------------------------------------------------------------------ the guard in real runs


def _settings(method: str, **dp: object) -> FederationSettings:
    return FederationSettings(
        method=method, seed=0, num_server_rounds=4, clients_per_round=4, eval_every=2, **dp
    )


def _methods() -> list:
    local = FAST
    return [
        FedAvgBT({"input_dim": DIM}, local),
        FedBiscuit({"input_dim": DIM}, local),
        fedvpl(SMALL, local),
        fedvpa_gp({**SMALL, "num_prototypes": 2, "ortho_warmup_rounds": 2}, local),
    ]


@pytest.mark.parametrize("method", _methods(), ids=lambda m: m.name)
def test_every_dp_method_runs_and_accounts(method) -> None:
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    settings = _settings(method.name, dp_noise_multiplier=1.0)
    protocol, _, rows = run_in_process(method, clients, settings)
    spends = [row["dp"]["epsilon"] for row in rows]
    assert len(rows) == 4 and all(b > a for a, b in zip(spends, spends[1:], strict=False))
    assert all(row["train"] == {} for row in rows)  # clients' metrics withheld
    assert "eval/seen/macro" in rows[-1]["eval"]
    expected = epsilon_for(1.0, 8, 4, 1e-5, method.stats_releases, num_rounds=4)
    assert spends[-1] == pytest.approx(expected, rel=1e-9)
    final = protocol.final_metrics(rows, 0.0, 0)
    assert final["privacy"]["epsilon"] == spends[-1] and final["stopped"] is None
    for arrays in (protocol.state.arrays,):
        assert all(np.all(np.isfinite(v)) for v in arrays.values())


def test_tiny_noise_and_a_loose_clip_give_the_plain_run() -> None:
    # Equal-size clients: equal weights change nothing, so DP with negligible noise and a clip
    # no update reaches must reproduce the non-private run (the guard distorts nothing else).
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    plain, _, _ = run_in_process(
        FedAvgBT({"input_dim": DIM}, FAST), clients, _settings("fedavg-bt")
    )
    private, _, _ = run_in_process(
        FedAvgBT({"input_dim": DIM}, FAST),
        clients,
        _settings("fedavg-bt", dp_noise_multiplier=1e-12, dp_clip_norm=1e3),
    )
    for key, value in plain.state.arrays.items():
        np.testing.assert_allclose(private.state.arrays[key], value, atol=1e-6)


def test_noise_from_the_seed_is_reproducible() -> None:
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    runs = [
        run_in_process(
            FedAvgBT({"input_dim": DIM}, FAST),
            clients,
            _settings("fedavg-bt", dp_noise_multiplier=0.5),
        )[0].state.arrays
        for _ in range(2)
    ]
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key])


def test_max_epsilon_stops_before_the_round_that_would_exceed_it() -> None:
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    full = run_in_process(
        FedAvgBT({"input_dim": DIM}, FAST), clients, _settings("fedavg-bt", dp_noise_multiplier=1.0)
    )[2]
    limit = (full[1]["dp"]["epsilon"] + full[2]["dp"]["epsilon"]) / 2  # between rounds 2 and 3
    protocol, _, rows = run_in_process(
        FedAvgBT({"input_dim": DIM}, FAST),
        clients,
        _settings("fedavg-bt", dp_noise_multiplier=1.0, dp_max_epsilon=limit),
    )
    assert [row["round"] for row in rows] == [1, 2]
    assert rows[-1]["dp"]["epsilon"] <= limit
    assert "dp-max-epsilon" in protocol.stopped


def test_target_epsilon_chooses_the_noise() -> None:
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    protocol, _, rows = run_in_process(
        FedAvgBT({"input_dim": DIM}, FAST), clients, _settings("fedavg-bt", dp_epsilon=4.0)
    )
    assert rows[-1]["dp"]["epsilon"] <= 4.0
    assert rows[-1]["dp"]["epsilon"] > 3.8  # the smallest noise that fits, not any


def test_a_resumed_guard_is_charged_for_the_finished_rounds() -> None:
    settings = _settings("fedvpa-gp", dp_noise_multiplier=1.0)
    method = _methods()[-1]
    fresh = ClientLevelDP(method, settings, num_seen=12)
    for r in range(1, 4):
        fresh.charge(r)
    resumed = ClientLevelDP(method, settings, num_seen=12)
    resumed.replay(3)
    assert resumed.report() == fresh.report()


def test_methods_that_cannot_be_privatised_are_refused_at_start() -> None:
    clients = make_toy_clients(8, pairs=12, dim=DIM)
    with pytest.raises(ConfigError, match="dp_supported"):
        run_in_process(ToyMethod(DIM), clients, _settings("toy", dp_noise_multiplier=1.0))
    method = FedAvgBT({"input_dim": DIM}, {**FAST, "validation_share": 0.25})
    with pytest.raises(ConfigError, match="validation-share"):
        run_in_process(method, clients, _settings("fedavg-bt", dp_noise_multiplier=1.0))


def test_undeclared_statistics_are_refused() -> None:
    method = FedAvgBT({"input_dim": DIM}, FAST)  # declares no statistics release
    guard = ClientLevelDP(method, _settings("fedavg-bt", dp_noise_multiplier=1.0), num_seen=12)
    sent = method.init_server_state(0).arrays
    update = ClientUpdate(dict(sent), 5, stats={"mu": np.zeros(2, np.float32)})
    with pytest.raises(ConfigError, match="does not declare"):
        guard.updates(1, sent, [(0, update)])


def test_clipped_updates_really_are_clipped_before_noise() -> None:
    method = FedAvgBT({"input_dim": DIM}, FAST)
    settings = _settings("fedavg-bt", dp_noise_multiplier=1e-12, dp_clip_norm=0.5)
    guard = ClientLevelDP(method, settings, num_seen=12)
    sent = method.init_server_state(0).arrays
    far = {k: v + 10.0 for k, v in sent.items()}
    out = guard.updates(1, sent, [(3, ClientUpdate(far, 7, metrics={"loss": 0.3}))])
    ((_, update),) = out
    assert update_norm(update.arrays, sent) == pytest.approx(0.5, rel=1e-4)
    assert update.num_examples == 1 and update.metrics == {}


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"dp_noise_multiplier": -1.0}, "dp-noise-multiplier"),
        ({"dp_clip_norm": 0.0}, "dp-clip-norm"),
        ({"dp_delta": 1.0}, "dp-delta"),
        ({"dp_noise_source": "dice"}, "dp-noise-source"),
        ({"dp_noise_multiplier": 1.0, "dp_epsilon": 2.0}, "dp-epsilon"),
        ({"dp_max_epsilon": float("nan")}, "dp-max-epsilon"),
    ],
)
def test_bad_dp_settings_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(FederationSettings(), **changes)
    assert err.value.field == key


def test_a_budget_round_one_does_not_fit_is_refused_before_any_run() -> None:
    # Bug: `fedvpa run` with a dp-max-epsilon below round 1's spend ran no round, wrote a
    # folder of dashes and exited 0. runner and the ServerApp now call this before the folder.
    from fedvpa.experiment import ExperimentConfig, check_privacy_budget

    clients = make_toy_clients(8, pairs=12, dim=DIM)
    flat = {"dp-noise-multiplier": 1.0, "clients-per-round": 4, "latent-dim": 4}
    tight = ExperimentConfig.from_flat({**flat, "dp-max-epsilon": 0.01}, source="test")
    with pytest.raises(ConfigError, match="not even one round fits") as caught:
        check_privacy_budget(tight, ["fedvpa-gp", "fedavg-bt"], clients)
    assert caught.value.field == "dp-max-epsilon"
    roomy = ExperimentConfig.from_flat({**flat, "dp-max-epsilon": 50.0}, source="test")
    check_privacy_budget(roomy, ["fedvpa-gp", "fedavg-bt"], clients)
    check_privacy_budget(  # no maximum: nothing to check
        ExperimentConfig.from_flat(flat, source="test"), ["fedavg-bt"], clients
    )


def test_dp_runs_of_a_trained_set_encoder_get_a_hint() -> None:
    from fedvpa.privacy.guard import encoder_advice

    assert "encoder=laplace" in encoder_advice(fedvpl(SMALL, FAST))
    assert "attention" in encoder_advice(fedvpa_gp(SMALL, FAST))
    assert encoder_advice(fedvpl({**SMALL, "encoder": "laplace"}, FAST)) is None
    assert encoder_advice(FedAvgBT({"input_dim": DIM}, FAST)) is None
