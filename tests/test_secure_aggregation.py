"""SecAgg+ (Flower's secaggplus_mod + SecAggPlusWorkflow) over FedAvg-BT's shared weights: the
server is handed only the aggregate, which equals the exact weighted mean of the same clients'
updates up to SecAgg+'s quantisation; methods that send more than weights are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_toy_clients

from fedvpa.embeddings.pipeline import save_client_tensors
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig
from fedvpa.federation.registry import create_method
from fedvpa.federation.secure_aggregation import SecureSettings, run_secure_aggregation
from fedvpa.methods.aggregation import weighted_average
from fedvpa.protocol import seeds
from fedvpa.protocol.client import train_step
from fedvpa.protocol.round import sample_clients

DIM = 16


def _kwargs() -> dict:
    return ExperimentConfig.from_flat({}, source="test").method_kwargs(DIM)


def test_methods_that_send_more_than_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="client-level DP"):
        SecureSettings("fedvpa-gp", _kwargs(), "x", num_rounds=1, clients_per_round=3)
    with pytest.raises(ConfigError, match="clients-per-round"):
        SecureSettings("fedavg-bt", _kwargs(), "x", num_rounds=1, clients_per_round=3, num_shares=4)


def test_secagg_gives_the_weighted_mean_and_hides_every_update(tmp_path: Path) -> None:
    clients = make_toy_clients(num_clients=4, pairs=16, dim=DIM, seed=3)
    path = tmp_path / "clients.pt"
    save_client_tensors(clients, path)
    settings = SecureSettings(
        "fedavg-bt", _kwargs(), str(path), num_rounds=2, clients_per_round=3, seed=5
    )
    outcome = run_secure_aggregation(settings, flwr_home=tmp_path / "flwr", log=lambda _: None)
    # every round: three clients, and the server was handed one vector, the aggregate
    assert [r["clients"] for r in outcome.rounds] == [3, 3]
    assert [r["distinct_updates_seen"] for r in outcome.rounds] == [1, 1]

    # the same rounds without SecAgg+, the clients the round protocol samples with this seed
    # (Flower's own sampler drew other clients on every run): the exact weighted mean
    method = create_method("fedavg-bt", _kwargs())
    arrays = method.init_server_state(5).arrays
    by_id = {c.client_id: c for c in clients}
    for server_round in (1, 2):
        chosen = sample_clients(5, server_round, sorted(by_id), 3)
        updates = [
            train_step(
                method, arrays, {}, by_id[i], {}, server_round,
                seeds.derive_seed(5, server_round, i, seeds.STREAM_TRAIN),
            )[0]
            for i in chosen
        ]  # fmt: skip
        arrays = weighted_average([(u.arrays, float(u.num_examples)) for u in updates])
    assert outcome.arrays is not None and set(outcome.arrays) == set(arrays)
    worst = max(float(np.abs(outcome.arrays[k] - arrays[k]).max()) for k in arrays)
    assert worst < 2e-5, worst  # quantisation: 2 * 8 / 2**22 = 3.8e-6 a step
    assert any(float(np.abs(arrays[k]).max()) > 1e-2 for k in arrays)  # weights did move


def test_a_weight_outside_the_clipping_range_is_refused_not_clipped(tmp_path: Path) -> None:
    import json

    from fedvpa.federation.messages import encode_kwargs
    from fedvpa.federation.secure_aggregation import SecureClient

    clients = make_toy_clients(num_clients=2, pairs=16, dim=DIM, seed=3)
    path = tmp_path / "clients.pt"
    save_client_tensors(clients, path)
    arrays = create_method("fedavg-bt", _kwargs()).init_server_state(0).arrays
    keys = sorted(arrays)
    config = {
        "method": "fedavg-bt", "method-kwargs": encode_kwargs(_kwargs()), "data-path": str(path),
        "array-keys": json.dumps(keys), "server-round": 1, "seed": 0, "clipping-range": 1e-3,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="clipping range"):
        SecureClient(0).fit([arrays[k] for k in keys], config)
    out, n, metrics = SecureClient(0).fit(
        [arrays[k] for k in keys], {**config, "clipping-range": 8.0}
    )
    assert len(out) == len(keys) and n == clients[0].num_examples and metrics == {}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ([], "method"),  # the default method, fedvpa-gp, sends its posteriors too
        (["--set", "method=fedavg-bt", "--set", "baseline=fedbiscuit"], "baseline"),
        (
            ["--set", "method=fedavg-bt", "--set", "dp-epsilon=4", "--set", "validation-share=0.2"],
            "validation-share",
        ),
        (["--set", "method=fedavg-bt", "--clients-per-round", "2"], "clients-per-round"),
    ],
)
def test_fedvpa_run_refuses_what_secagg_cannot_cover(
    tmp_path: Path, extra: list[str], named: str
) -> None:
    from test_cli import fedvpa

    out = tmp_path / "run"
    result = fedvpa("--out", str(out), "run", "--set", "secure-aggregation=true", *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_fedvpa_run_with_secure_aggregation_end_to_end(tmp_path: Path) -> None:
    """`fedvpa run --set secure-aggregation=true`: real data, MiniLM, SecAgg+ on Flower."""
    import json

    from test_cli import fedvpa

    out = tmp_path / "run"
    result = fedvpa(
        "--out", str(out), "run", "--num-clients", "6", "--rounds", "2",
        "--clients-per-round", "3", "--set", "method=fedavg-bt", "--set", "baseline=",
        "--set", "secure-aggregation=true", "--set", "synthetic-pairs-per-type=40",
        "--set", "pairs-per-client=6", "--set", "local-steps=2",
        "--set", "fraction-unseen=0.34",
        env={"FEDVPA_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "fedavg-bt" / "final.json").read_text())
    secagg = final["secure_aggregation"]
    assert secagg["server_saw_only_aggregates"] and len(secagg["rounds"]) == 2
    assert all(r["clients"] == 3 for r in secagg["rounds"])
    summary = json.loads((out / "summary.json").read_text())
    res = summary["methods"]["fedavg-bt"]
    assert res["seen"]["macro"] is not None and res["unseen"]["macro"] is not None
    # no dead end: --resume of a finished run redoes nothing; of a killed one, the method
    resumed = fedvpa("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "fedavg-bt" / "final.json").read_text()) == final
    (out / "fedavg-bt" / "final.json").unlink()  # as if killed before the end
    redone = fedvpa("run", "--resume", str(out))
    assert redone.returncode == 0, redone.stderr[-3000:]
    again = json.loads((out / "fedavg-bt" / "final.json").read_text())
    assert len(again["secure_aggregation"]["rounds"]) == 2

    # with DP: the budget is resolved from the prepared data (the first version read the
    # tensors from "." and refused every `dp-epsilon` run with "not a readable tensor file")
    private = tmp_path / "private"
    common = [
        "run", "--num-clients", "6", "--rounds", "2", "--clients-per-round", "3",
        "--set", "method=fedavg-bt", "--set", "baseline=", "--set", "secure-aggregation=true",
        "--set", "synthetic-pairs-per-type=40", "--set", "pairs-per-client=6",
        "--set", "local-steps=2", "--set", "fraction-unseen=0.34",
    ]  # fmt: skip
    env = {"FEDVPA_CACHE": str(tmp_path / "cache")}
    result = fedvpa("--out", str(private), *common, "--set", "dp-epsilon=8", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    spent = json.loads((private / "fedavg-bt" / "final.json").read_text())["privacy"]
    assert 0 < spent["epsilon"] <= 8 and spent["rounds_charged"] == 2
    # a budget not even round 1 fits: one line, exit 2, no folder
    tight = tmp_path / "tight"
    result = fedvpa(
        "--out", str(tight), *common, "--set", "dp-noise-multiplier=1",
        "--set", "dp-max-epsilon=0.01", env=env,
    )  # fmt: skip
    assert result.returncode == 2 and "dp-max-epsilon" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not tight.exists()


def test_compare_refuses_secure_aggregation_before_any_work(tmp_path: Path) -> None:
    from fedvpa.compare import run_compare

    exp = ExperimentConfig.from_flat({"secure-aggregation": True}, source="test")
    with pytest.raises(ConfigError, match="compare"):
        run_compare(exp, ["fedavg-bt"], [0], tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()


def test_secagg_with_dp_clips_on_the_client_and_noises_the_mean(tmp_path: Path) -> None:
    """SecAgg+ with client-level DP: each client's update is clipped before it is masked, every
    client weighs 1, and Flower's central-DP wrapper noises the unmasked mean with std z C / m,
    reproducibly from the run seed. Recomputed here without Flower: the same numbers."""
    from fedvpa.methods.aggregation import weighted_average
    from fedvpa.privacy.mechanism import clip_update, update_norm

    clients = make_toy_clients(num_clients=4, pairs=16, dim=DIM, seed=3)
    path = tmp_path / "clients.pt"
    save_client_tensors(clients, path)
    z, clip = 0.5, 0.05
    settings = SecureSettings(
        "fedavg-bt", _kwargs(), str(path), num_rounds=2, clients_per_round=3, seed=5,
        dp_noise_multiplier=z, dp_clip_norm=clip,
    )  # fmt: skip
    outcome = run_secure_aggregation(settings, flwr_home=tmp_path / "flwr", log=lambda _: None)
    assert [r["distinct_updates_seen"] for r in outcome.rounds] == [1, 1]

    method = create_method("fedavg-bt", _kwargs())
    arrays = method.init_server_state(5).arrays
    keys = sorted(arrays)
    by_id = {c.client_id: c for c in clients}
    norms = []
    for server_round in (1, 2):
        updates = [
            train_step(
                method, arrays, {}, by_id[i], {}, server_round,
                seeds.derive_seed(5, server_round, i, seeds.STREAM_TRAIN),
            )[0].arrays
            for i in sample_clients(5, server_round, sorted(by_id), 3)
        ]  # fmt: skip
        norms += [update_norm(u, arrays) for u in updates]
        clipped = [clip_update(u, arrays, clip) for u in updates]
        mean = weighted_average([(u, 1.0) for u in clipped])  # equal weights
        np.random.seed(seeds.derive_seed(5, server_round, 0, seeds.STREAM_PRIVACY) % 2**32)
        std = z * clip / 3
        arrays = {
            k: (np.asarray(mean[k], np.float64) + np.random.normal(0, std, mean[k].shape)).astype(
                mean[k].dtype
            )
            for k in keys
        }
    assert min(norms) > 10 * clip  # the clipping bound, not the updates, set the step
    assert outcome.arrays is not None
    worst = max(float(np.abs(outcome.arrays[k] - arrays[k]).max()) for k in keys)
    assert worst < 2e-5, worst
    # the noise is there: without it the weights would be the clipped mean's
    assert outcome.privacy is not None and outcome.privacy["rounds_charged"] == 2
    assert [r["epsilon"] for r in outcome.rounds] == sorted(r["epsilon"] for r in outcome.rounds)


def test_secagg_dp_spend_and_max_epsilon(tmp_path: Path) -> None:
    """The spend is the accountant's for m of N clients without replacement and no statistics
    releases; dp-max-epsilon runs only the rounds that fit and says why it stopped."""
    from fedvpa.federation.secure_aggregation import privacy_plan, run_secure_method
    from fedvpa.privacy.accounting import epsilon_for

    clients = make_toy_clients(num_clients=5, pairs=16, dim=DIM, seed=3)
    path = tmp_path / "clients.pt"
    save_client_tensors(clients, path)
    seen = sum(not c.unseen for c in clients)
    base = dict(
        num_rounds=4, clients_per_round=3, seed=1, dp_noise_multiplier=2.0, dp_clip_norm=1.0
    )
    rounds, spent, stopped = privacy_plan(
        SecureSettings("fedavg-bt", _kwargs(), str(path), **base), seen
    )
    assert rounds == 4 and stopped is None
    assert spent[-1] == pytest.approx(epsilon_for(2.0, seen, 3, 1e-5, lambda _: 0, 4))
    limit = (spent[1] + spent[2]) / 2  # rounds 1-2 fit, round 3 does not
    settings = SecureSettings("fedavg-bt", _kwargs(), str(path), **base, dp_max_epsilon=limit)
    final = run_secure_method(settings, clients, tmp_path / "run", log=lambda _: None)
    assert final["final_round"] == 2 and "dp-max-epsilon" in final["stopped"]
    assert final["privacy"]["epsilon"] == pytest.approx(spent[1]) and spent[1] <= limit
    assert final["eval"]  # the weights of round 2 were scored
    tight = SecureSettings("fedavg-bt", _kwargs(), str(path), **base, dp_max_epsilon=spent[0] / 2)
    with pytest.raises(ConfigError, match="not even one round"):
        run_secure_method(tight, clients, tmp_path / "tight", log=lambda _: None)


def test_secagg_with_dp_survives_weights_beyond_any_fixed_range(tmp_path: Path) -> None:
    # Regression: the first version masked the clipped *weights*; DP noise (std about 1 per
    # entry per round at epsilon 4 on the embedded data) carried them outside SecAgg+'s range
    # of 8 within 1-3 rounds and every client refused. Clients now mask their clipped change,
    # which lies in [-C, C] whatever the weights are.
    clients = make_toy_clients(num_clients=4, pairs=16, dim=DIM, seed=3)
    path = tmp_path / "clients.pt"
    save_client_tensors(clients, path)
    settings = SecureSettings(
        "fedavg-bt", _kwargs(), str(path), num_rounds=3, clients_per_round=4, seed=0,
        dp_noise_multiplier=200.0, dp_clip_norm=1.0,
    )  # fmt: skip
    outcome = run_secure_aggregation(settings, flwr_home=tmp_path / "flwr", log=lambda _: None)
    assert len(outcome.rounds) == 3 and outcome.arrays is not None
    assert max(float(np.abs(a).max()) for a in outcome.arrays.values()) > 8 * 10
