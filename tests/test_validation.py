"""Model selection on a client-held validation share (methods/validation.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedvpa.errors import ConfigError
from fedvpa.methods.base import ClientUpdate, ServerState
from fedvpa.methods.local_config import LocalConfig
from fedvpa.methods.reward_heads import FedAvgBT
from fedvpa.methods.validation import (
    VAL_NLL,
    VAL_PAIRS,
    hold_out,
    keep_best,
    round_validation_nll,
    selected_arrays,
    validation_scores,
    validation_size,
)
from fedvpa.methods.variational import make_variant
from tests.helpers import make_toy_clients
from tests.method_loop import run_in_process


def _rows(pairs) -> set[tuple[float, ...]]:
    return {tuple(row.tolist()) for row in torch.cat([pairs.emb_a, pairs.emb_b], 1)}


def test_validation_size_leaves_two_pairs_to_train_on() -> None:
    assert validation_size(16, 0.25) == 4
    assert validation_size(16, 0.0) == 0
    assert validation_size(3, 0.9) == 1
    assert validation_size(2, 0.5) == 0


def test_hold_out_is_disjoint_fixed_per_client_and_leaves_test_alone() -> None:
    client = make_toy_clients(num_clients=2, pairs=16, num_context=4, num_test=4)[1]
    held, val = hold_out(client, 0.25)
    assert val is not None and len(val) == 3  # 12 labelled pairs
    assert len(held.labelled) == 9
    assert not _rows(held.labelled) & _rows(val)
    assert _rows(held.labelled) | _rows(val) == _rows(client.labelled)
    assert held.test is client.test
    again_held, again_val = hold_out(client, 0.25)
    assert _rows(again_val) == _rows(val)
    untouched, none = hold_out(client, 0.0)
    assert untouched is client and none is None


def test_validation_scores_match_the_closed_form() -> None:
    client = make_toy_clients(num_clients=1, pairs=8, num_context=2, num_test=2)[0]
    pairs = client.train
    probs = torch.tensor([0.9, 0.2, 0.6, 0.5])

    class Fixed:
        def prob_a_preferred(self, client, pairs):
            return probs

    scores = validation_scores(Fixed(), client, pairs)
    both = list(zip(probs.tolist(), pairs.label.tolist(), strict=True))
    expected = -sum(math.log(p) if y == 1 else math.log(1 - p) for p, y in both)
    assert scores[VAL_NLL] == pytest.approx(expected, rel=1e-6)
    assert scores[VAL_PAIRS] == 4
    assert scores["val_correct"] == sum((p > 0.5) == (y == 1) for p, y in both)


def _update(nll: float, pairs: float) -> ClientUpdate:
    return ClientUpdate(arrays={}, num_examples=1, metrics={VAL_NLL: nll, VAL_PAIRS: pairs})


def test_keep_best_keeps_the_weights_the_clients_scored_best() -> None:
    assert round_validation_nll([(0, _update(2.0, 4)), (1, _update(1.0, 1))]) == pytest.approx(0.6)
    assert round_validation_nll([(0, ClientUpdate({}, 1))]) is None
    s0 = ServerState(arrays={"w": np.zeros(2)})
    s1 = ServerState(arrays={"w": np.ones(2)})
    s2 = ServerState(arrays={"w": np.full(2, 2.0)})
    a = keep_best(s0, s1, 0.6, server_round=1)  # round 1 scored s0
    np.testing.assert_array_equal(selected_arrays(a)["w"], np.zeros(2))
    b = keep_best(replace_info(s1, a), s2, 0.5, server_round=2)  # better: s1 kept
    np.testing.assert_array_equal(selected_arrays(b)["w"], np.ones(2))
    assert b.info["selected_after_round"] == 1
    c = keep_best(
        replace_info(s2, b),
        ServerState(arrays={"w": np.full(2, 3.0)}, extra=b.extra, info=b.info),
        0.7,
        server_round=3,
    )
    np.testing.assert_array_equal(selected_arrays(c)["w"], np.ones(2))  # worse: kept stays
    assert c.info["val_nll"] == 0.7 and c.info["selected_val_nll"] == 0.5


def replace_info(state: ServerState, previous: ServerState) -> ServerState:
    return ServerState(arrays=state.arrays, extra=previous.extra, info=previous.info)


def test_validation_share_must_be_a_share() -> None:
    with pytest.raises(ConfigError, match="validation_share"):
        LocalConfig(validation_share=1.0)
    with pytest.raises(ConfigError, match="validation_share"):
        LocalConfig.from_dict({"validation_share": -0.1})


@pytest.mark.parametrize("method_name", ["fedvpl", "fedavg-bt"])
def test_validation_pairs_never_reach_local_training(method_name: str) -> None:
    clients = make_toy_clients(num_clients=4, pairs=16, num_context=4, num_test=4)
    local = {"validation_share": 0.25, "local_steps": 2}
    if method_name == "fedavg-bt":
        method = FedAvgBT({"input_dim": 16}, local)
    else:
        method = make_variant(method_name, {"input_dim": 16, "latent_dim": 4}, local)
    seen: list = []
    original = method.client_train

    def spy(global_arrays, payload, client, client_state, server_round, seed):
        seen.append(client)
        return original(global_arrays, payload, client, client_state, server_round, seed)

    method.client_train = spy  # type: ignore[method-assign]
    state = method.init_server_state(0)
    update, _ = method.train_on_client(state.arrays, {}, clients[0], {}, 1, 0)
    _, val = hold_out(clients[0], 0.25)
    assert not _rows(seen[0].labelled) & _rows(val)
    assert update.num_examples == 9
    assert update.metrics[VAL_PAIRS] == 3 and update.metrics[VAL_NLL] > 0


def test_a_run_with_a_validation_share_reports_a_kept_round() -> None:
    clients = make_toy_clients(num_clients=12, pairs=16, num_context=4, num_test=4, seed=1)
    method = make_variant(
        "fedvpl", {"input_dim": 16, "latent_dim": 4}, {"validation_share": 0.25, "local_steps": 5}
    )
    state, _, _ = run_in_process(method, clients, rounds=6, per_round=4)
    info = method.round_info(state)
    assert 0 <= info["selected_after_round"] <= 5
    assert math.isfinite(info["val_nll"])
    chosen = method.evaluation_arrays(state)
    assert set(chosen) == set(state.arrays)
    assert chosen is not state.arrays
    plain = make_variant("fedvpl", {"input_dim": 16, "latent_dim": 4}, {"local_steps": 5})
    plain_state, _, _ = run_in_process(plain, clients, rounds=2, per_round=4)
    assert plain.round_info(plain_state) == {}
    assert plain.evaluation_arrays(plain_state) is plain_state.arrays
