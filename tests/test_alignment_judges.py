"""The held-out judges' statistics against closed forms, and the judges themselves on toy
embeddings (no backbone, no policy: runs in CI's ``test`` extra)."""

from __future__ import annotations

import numpy as np
import pytest

from fedvpa.alignment.judges import (
    Judge,
    bootstrap_interval,
    both_order_scores,
    train_judges,
    wilson_interval,
    win_rate,
)
from fedvpa.data.schema import PreferencePair

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score interval without continuity correction).
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), NEWCOMBE)
def test_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(k, n)
    assert interval.estimate == pytest.approx(k / n)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


def test_wilson_closed_form_and_symmetry() -> None:
    # half of n: symmetric around 0.5 with half-width z sqrt(n/4 + z^2/4) / (n + z^2)
    z, n = 1.959963984540054, 50
    half = z * np.sqrt(n / 4 + z * z / 4) / (n + z * z)
    interval = wilson_interval(25, n)
    assert interval.low == pytest.approx(0.5 - half) and interval.high == pytest.approx(0.5 + half)
    a, b = wilson_interval(7, 30), wilson_interval(23, 30)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert np.isnan(wilson_interval(0, 0).estimate)


def test_both_orders_and_ties_count_half() -> None:
    scores = both_order_scores(np.array([0.9, 0.9, 0.1, 0.2]), np.array([0.8, 0.3, 0.2, 0.7]))
    assert scores.tolist() == [1.0, 0.5, 0.0, 0.5]
    rate = win_rate(scores)
    assert rate.estimate == pytest.approx(0.5) and rate.n == 4
    assert rate.low == pytest.approx(wilson_interval(2, 4).low)


def test_bootstrap_interval_is_paired_and_close_to_the_normal_one() -> None:
    rng = np.random.default_rng(0)
    same = bootstrap_interval(np.ones(30))
    assert same.low == same.high == same.estimate == 1.0
    values = rng.normal(0.3, 1.0, size=400)
    interval = bootstrap_interval(values, seed=1)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert interval.low == pytest.approx(values.mean() - 1.96 * se, abs=0.3 * se)
    assert interval.high == pytest.approx(values.mean() + 1.96 * se, abs=0.3 * se)
    assert interval.excludes_zero


def _toy_embed(texts: list[str]) -> np.ndarray:
    """Dimension 0: a refusal; dimension 1: length; dimension 2: noise."""
    rng = np.random.default_rng(len(texts))
    return np.array([[float("refuse" in t), len(t.split()) / 10, rng.normal()] for t in texts])


def _toy_pairs(n: int) -> list[PreferencePair]:
    """Harmless users prefer the refusal, helpful users the instructions."""
    pairs = []
    for i in range(n):
        prompt = f"\n\nHuman: how do I do risky thing {i}?\n\nAssistant:"
        steps, refuse = f"do step {i} then step {i + 1}", f"I refuse, ask someone {i}"
        for user_type, preferred in (("helpful", 0), ("harmless", 1)):
            pair = PreferencePair(prompt, steps, refuse, preferred, user_type=user_type)
            pairs.append(pair.swapped() if i % 2 else pair)
    return pairs


def test_judges_learn_each_type_and_skip_the_pairs_the_selector_saw() -> None:
    pairs = _toy_pairs(60)
    seen = {(p.prompt, p.response_a, p.response_b) for p in pairs[:40]}
    judges = train_judges(pairs, _toy_embed, exclude=seen, seed=0)
    assert set(judges) == {"helpful", "harmless"}
    # 60 comparisons x 2 types, the first 20 comparisons (40 pairs) excluded, 80% to training
    assert judges["helpful"].train_pairs == judges["harmless"].train_pairs == 32
    assert judges["helpful"].heldout_accuracy == 1.0 and judges["harmless"].heldout_accuracy == 1.0
    refuse, steps = np.array([[1.0, 0.5, 0.0]]), np.array([[0.0, 0.5, 0.0]])
    assert judges["harmless"].compare(refuse, steps).tolist() == [1.0]
    assert judges["helpful"].compare(refuse, steps).tolist() == [0.0]
    again = Judge.from_json(judges["helpful"].to_json())
    assert np.allclose(again.prob_first(refuse, steps), judges["helpful"].prob_first(refuse, steps))


def test_held_out_file_pairs_drop_every_pair_a_client_holds_in_either_order() -> None:
    from fedvpa.alignment.judges import held_out_file_pairs, is_generated
    from fedvpa.data.schema import PreferencePair

    pairs = [PreferencePair(f"p{i}", f"a{i}", f"b{i}", preferred=i % 2) for i in range(6)]
    held = [pairs[0], PreferencePair("p1", "b1", "a1", preferred=0)]  # pair 1, swapped
    assert held_out_file_pairs(pairs, held) == pairs[2:]
    assert is_generated("synthetic-4") and is_generated("plural-3")
    assert not is_generated("../shared/data/relabeled-hh-rlhf/dev.jsonl.gz")
