"""Evaluation of any Predictor: both A/B orders, per type, seen/unseen, conflict pairs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_toy_clients

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.errors import ConfigError
from fedvpa.evaluation import evaluate, evaluate_client, merge_counts


class Truth:
    """Knows the label of every pair (to test the counting, not a model)."""

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        return pairs.label.clone()


class AlwaysA:
    """Maximal position bias: p(A) = 0.9 whatever the pair."""

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        return torch.full((len(pairs),), 0.9)


class HelpfulOnly:
    """Right for type 0, wrong on the conflict pairs of type 1."""

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        if client.type_index == 0:
            return pairs.label.clone()
        return torch.where(pairs.conflict, 1.0 - pairs.label, pairs.label)


@pytest.fixture(scope="module")
def clients() -> list[ClientTensors]:
    return make_toy_clients(10, 16, 16, seed=0, num_unseen=4)


def test_perfect_predictor(clients) -> None:
    report = evaluate(Truth(), clients)
    assert report["seen"] == {"harmless": 1.0, "helpful": 1.0, "macro": 1.0, "n": 24.0}
    assert report["unseen"]["macro"] == 1.0 and report["unseen"]["n"] == 48.0
    assert report["conflict"]["all"]["macro"] == 1.0
    assert report["position_consistency"] == 1.0 and report["num_clients"] == 10
    assert report["nll"] < 1e-6


def test_position_bias_scores_exactly_chance(clients) -> None:
    report = evaluate(AlwaysA(), clients)
    assert report["all"]["macro"] == 0.5  # p_avg = 0.5 for every pair: a tie counts half
    assert report["position_consistency"] == 0.0
    assert report["nll"] == pytest.approx(math.log(2.0))


def test_per_type_and_conflict_accuracy(clients) -> None:
    report = evaluate(HelpfulOnly(), clients)
    assert report["all"]["helpful"] == 1.0
    assert report["conflict"]["all"]["helpful"] == 1.0
    assert report["conflict"]["all"]["harmless"] == 0.0
    pairs = [c.test for c in clients if c.type_index == 1]
    share = float(torch.cat([p.conflict for p in pairs]).float().mean())
    assert report["all"]["harmless"] == pytest.approx(1.0 - share)
    assert report["all"]["macro"] == pytest.approx((1.0 + 1.0 - share) / 2)


def test_merged_client_counts_equal_direct_evaluation(clients) -> None:
    counts = [evaluate_client(HelpfulOnly(), c) for c in clients]
    assert all(isinstance(v, float) for row in counts for v in row.values())
    merged = merge_counts(counts, ["helpful", "harmless"])
    assert merged == evaluate(HelpfulOnly(), clients)
    assert "0" in merge_counts(counts)["all"]  # unnamed types fall back to their index


def test_other_splits_and_bad_split(clients) -> None:
    assert evaluate(Truth(), clients, split="context")["all"]["n"] == 40.0
    with pytest.raises(ConfigError):
        evaluate_client(Truth(), clients[0], split="validation")


def test_unknown_conflicts_give_no_conflict_report(clients) -> None:
    import dataclasses

    hidden = [
        dataclasses.replace(c, test=dataclasses.replace(c.test, conflict_known=False))
        for c in clients
    ]
    assert "conflict" not in evaluate(Truth(), hidden)
