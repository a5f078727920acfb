"""Pooled-data references on the toy tensor data: the model must personalise before federation."""

from __future__ import annotations

import pytest
import torch
from helpers import make_toy_clients

from fedvpa.evaluation import evaluate
from fedvpa.model.config import ModelConfig
from fedvpa.training.centralised import (
    train_centralised_vpl,
    train_monolithic,
    train_oracle,
)

CFG = ModelConfig(
    input_dim=16, hidden_dim=32, feature_dim=16, latent_dim=8, selector_hidden=32, use_ortho=True
)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    torch.set_num_threads(1)
    clients = make_toy_clients(40, 16, 16, seed=0, num_unseen=8)
    return {
        "vpl": evaluate(train_centralised_vpl(clients, CFG, steps=200, lr=3e-3, seed=0), clients),
        "oracle": evaluate(train_oracle(clients, CFG, steps=200, lr=3e-3, seed=0), clients),
        "mono": evaluate(train_monolithic(clients, CFG, steps=200, lr=3e-3, seed=0), clients),
    }


def test_oracle_is_near_perfect_and_monolithic_at_chance_on_conflicts(results) -> None:
    assert results["oracle"]["seen"]["macro"] > 0.95
    assert 0.3 <= results["mono"]["conflict"]["all"]["macro"] <= 0.7
    assert results["mono"]["seen"]["macro"] < 0.9


def test_centralised_vpl_personalises_close_to_the_oracle(results) -> None:
    vpl, oracle = results["vpl"], results["oracle"]
    for group in ("seen", "unseen"):
        for name in ("helpful", "harmless"):
            assert vpl[group][name] >= oracle[group][name] - 0.08, (group, name)
    assert vpl["conflict"]["all"]["macro"] > 0.85
    assert results["vpl"]["position_consistency"] == 1.0
