"""The group census (``group-census``): FedVPA-GP's ``num-prototypes = "auto"`` chosen from where
the population places every seen client once, instead of from the store of encoder means."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedvpa.config import FederationSettings
from fedvpa.methods.base import ServerState
from fedvpa.methods.variational import make_variant
from fedvpa.model.config import ModelConfig
from fedvpa.model.prototypes import choose_num_groups
from fedvpa.privacy.guard import census_note
from fedvpa.protocol.in_process import run_in_process
from tests.helpers import make_toy_clients

MODEL = {
    "input_dim": 8,
    "latent_dim": 4,
    "max_groups": 4,
    "ortho_warmup_rounds": 2,
    "prior_warmup_rounds": 1,
}
LOCAL = {"local_steps": 3, "latent_first_steps": 1}


def _method(**model: object):
    return make_variant("fedvpa-gp", {**MODEL, "group_census": True, **model}, LOCAL)


def _settings(rounds: int = 4, **values: object) -> FederationSettings:
    return FederationSettings(
        method="fedvpa-gp", seed=0, num_server_rounds=rounds, clients_per_round=6,
        eval_every=rounds, **values,
    )  # fmt: skip


def test_the_census_is_off_by_default_and_not_recorded_then() -> None:
    assert ModelConfig().group_census is False
    assert "group_census" not in ModelConfig().to_dict()  # earlier runs' records stay valid
    assert ModelConfig(group_census=True).to_dict()["group_census"] is True


def test_a_census_asks_every_seen_client_once_and_chooses_from_its_placements() -> None:
    clients = make_toy_clients(num_clients=16, pairs=12, dim=8, seed=0)
    seen = sorted(c.client_id for c in clients if not c.unseen)
    method = _method()
    rows: list[dict] = []
    protocol, _, _ = run_in_process(method, clients, _settings(), lambda row, _: rows.append(row))
    census = [row for row in rows if "census_replies" in row]
    assert [row["round"] for row in census] == [3]  # the first pull round, once
    assert census[0]["census_replies"] == len(seen) and census[0]["census_failures"] == 0
    info = protocol.state.info
    assert info["group_census"] == len(seen)
    k = int(protocol.state.extra["num_groups"][0])
    assert info["num_groups"] == k and 2 <= k <= 4 and info["group_scores"]
    # Without the key the store of encoder means chooses, and no census row appears.
    rows.clear()
    plain = make_variant("fedvpa-gp", MODEL, LOCAL)
    protocol, _, _ = run_in_process(plain, clients, _settings(), lambda row, _: rows.append(row))
    assert not any("census_replies" in row for row in rows)
    assert "group_census" not in protocol.state.info and protocol.state.info["group_scores"]


def test_census_placements_are_the_population_posterior_means_evaluation_reads() -> None:
    clients = make_toy_clients(num_clients=16, pairs=12, dim=8, seed=1)
    method = _method()
    captured: list[ServerState] = []

    def keep(row: dict, protocol) -> None:
        if row["round"] == 2:
            captured.append(protocol.state)

    run_in_process(method, clients, _settings(rounds=2), keep)
    state = captured[0]
    assert method.census_arrays(state, 2) is None  # not a pull round yet
    arrays = method.census_arrays(state, 3)
    assert arrays is not None and {"population_mu", "population_n"} <= set(arrays)
    predictor = method.predictor(arrays)
    seen = [c for c in clients if not c.unseen]
    placed = {c.client_id: method.locate(arrays, c) for c in seen}
    for c in seen:
        np.testing.assert_allclose(placed[c.client_id]["mu"], predictor.latent(c).numpy())
    # Without the population rows, locate is the encoder's mean as before.
    plain = method.locate(state.arrays, seen[0])["mu"]
    assert not np.allclose(plain, placed[seen[0].client_id]["mu"])
    # The choice reads the placements in client-id order, whatever order they arrived in.
    shuffled = dict(reversed(list(placed.items())))
    chosen = method.take_census(state, shuffled, 3)
    points = np.stack([placed[c]["mu"] for c in sorted(placed)])
    k, _ = choose_num_groups(points, 4, 3)
    assert int(chosen.extra["num_groups"][0]) == k
    # Once chosen, neither a census nor its answers change anything.
    assert method.census_arrays(chosen, 3) is None
    assert method.take_census(chosen, placed, 4) is chosen


@pytest.mark.parametrize(
    "model",
    [
        {"group_census": False},
        {"num_prototypes": 3},
        {"latent_inference": "encoder"},
    ],
)
def test_no_census_where_it_has_nothing_to_choose_or_no_population(model: dict) -> None:
    clients = make_toy_clients(num_clients=12, pairs=12, dim=8, seed=0)
    method = _method(**model)
    captured: list[ServerState] = []
    run_in_process(method, clients, _settings(rounds=2), lambda r, p: captured.append(p.state))
    assert method.census_arrays(captured[-1], 3) is None


def test_under_dp_the_census_is_skipped_and_the_run_says_so() -> None:
    clients = make_toy_clients(num_clients=16, pairs=12, dim=8, seed=0)
    method = _method()
    rows: list[dict] = []
    settings = _settings(dp_noise_multiplier=1.0, dp_clip_norm=1.0)
    protocol, _, _ = run_in_process(method, clients, settings, lambda row, _: rows.append(row))
    assert not any("census_replies" in row for row in rows)
    assert int(protocol.state.extra["num_groups"][0]) >= 2  # chosen from the store instead
    assert "group census" in (census_note(method) or "")
    assert census_note(make_variant("fedvpa-gp", MODEL, LOCAL)) is None


@pytest.mark.slow
def test_a_census_on_flower_makes_the_in_process_runs_choice(tmp_path) -> None:
    """On Flower's simulation engine (nodes of three clients) the census travels as a locate
    message to every seen client, before the round's own locate exchange; the run reaches the
    in-process run's choice, scores and numbers."""
    from fedvpa.embeddings.pipeline import save_client_tensors
    from fedvpa.federation.run_config import FederationConfig
    from fedvpa.federation.runtime import run_federated

    clients = make_toy_clients(12, pairs=12, dim=8, seed=1, num_unseen=2)
    save_client_tensors(clients, tmp_path / "clients.pt")
    settings = _settings(rounds=4, clients_per_node=3, client_timeout=600.0)
    method = _method()
    config = FederationConfig(
        settings=settings,
        method_kwargs=method.effective_config(),
        data_path=str(tmp_path / "clients.pt"),
        run_dir=str(tmp_path / "run"),
        num_clients=len(clients),
    )
    final = run_federated(config, flwr_home=tmp_path / "flwr_home")
    history = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row.get("census_replies") for row in history] == [None, None, 10, None]
    assert history[2]["locate_replies"] == 6 and history[2]["errors"] == 0
    protocol, _, rows = run_in_process(method, clients, settings)
    assert final["info"] == protocol.state.info and final["info"]["group_census"] == 10
    assert final["eval"] == rows[-1]["eval"]
