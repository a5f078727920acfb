"""The embedded synthetic data: labels per type, determinism, variety, no length shortcut."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from fedvpa.data.schema import PreferencePair
from fedvpa.data.summary import summarise_pairs
from fedvpa.data.synthetic import generate_synthetic, synthetic_user_types
from fedvpa.data.synthetic_text import TOPICS
from fedvpa.data.transcript import last_human_turn
from fedvpa.errors import ConfigError


def by_comparison(pairs: list[PreferencePair]) -> dict[str, dict[str, str]]:
    """source -> {user_type: chosen text}: the same comparison as each type labels it."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for p in pairs:
        out[p.source][p.user_type] = p.chosen  # type: ignore[index]
    return out


@pytest.mark.parametrize("num_types", [2, 4])
def test_shape_types_and_conflict_share(num_types: int) -> None:
    pairs = generate_synthetic(num_types, pairs_per_type=300, conflict_share=0.4, seed=0)
    types = synthetic_user_types(num_types)
    assert len(pairs) == 300 * num_types
    assert Counter(p.user_type for p in pairs) == dict.fromkeys(types, 300)
    assert sum(p.conflict for p in pairs) == 120 * num_types
    assert all(p.user is None and p.conflict is not None for p in pairs)
    # A conflict is exactly a comparison whose label differs across types.
    comps = by_comparison(pairs)
    conflict_of = {p.source: p.conflict for p in pairs}
    assert all(len(v) == num_types for v in comps.values())
    assert all((len(set(v.values())) > 1) == conflict_of[s] for s, v in comps.items())
    assert summarise_pairs(pairs)["label_disagreement_share"] == pytest.approx(0.4)


def test_two_type_semantics() -> None:
    pairs = generate_synthetic(2, pairs_per_type=200, seed=3)
    comps = by_comparison(pairs)
    conflict = {p.source for p in pairs if p.conflict}
    for source, chosen in comps.items():
        if source in conflict:
            # helpful users pick the instructions, harmless users the refusal/redirect
            assert chosen["helpful"] != chosen["harmless"]
        else:
            assert chosen["helpful"] == chosen["harmless"]


def test_four_type_conflicts_on_both_axes() -> None:
    pairs = generate_synthetic(4, pairs_per_type=200, conflict_share=1.0, seed=0)
    comps = by_comparison(pairs)
    safety = verbosity = 0
    for chosen in comps.values():
        if chosen["helpful-concise"] == chosen["helpful-detailed"]:
            safety += 1  # the verbosity axis agrees: the safety axis splits them
            assert chosen["helpful-concise"] != chosen["harmless-concise"]
            assert chosen["harmless-concise"] == chosen["harmless-detailed"]
        else:
            verbosity += 1
            assert chosen["helpful-concise"] == chosen["harmless-concise"]
            assert chosen["helpful-detailed"] == chosen["harmless-detailed"]
    assert safety == verbosity == 100


def test_deterministic_by_seed() -> None:
    a = generate_synthetic(2, 150, seed=7)
    assert a == generate_synthetic(2, 150, seed=7)
    assert a != generate_synthetic(2, 150, seed=8)


def test_variety_and_format() -> None:
    pairs = generate_synthetic(2, seed=0)
    assert len(TOPICS) >= 30
    assert len({t.name for t in TOPICS}) == len(TOPICS)
    mentioned = {t.name for t in TOPICS if any(t.name in p.prompt for p in pairs)}
    tasks = {task for t in TOPICS for task in (*t.risky, *t.everyday)}
    asked = {task for task in tasks if any(task in last_human_turn(p.prompt) for p in pairs[:1200])}
    assert len(asked) >= 150 and len(mentioned) >= 10
    replies = {r for p in pairs for r in (p.response_a, p.response_b)}
    assert len(replies) >= 1200
    assert len({p.prompt for p in pairs}) >= 600
    assert all(p.prompt.endswith("\n\nAssistant:") and last_human_turn(p.prompt) for p in pairs)
    assert all("{" not in r and "}" not in r for r in replies)  # every slot filled
    share_a = sum(p.preferred == 0 for p in pairs) / len(pairs)
    assert 0.45 < share_a < 0.55


def test_length_is_not_the_signal_in_the_two_type_data() -> None:
    pairs = generate_synthetic(2, seed=0)
    for user_type in ("helpful", "harmless"):
        for conflict in (True, False):
            sub = [p for p in pairs if p.user_type == user_type and p.conflict is conflict]
            longer = sum(len(p.chosen.split()) > len(p.rejected.split()) for p in sub) / len(sub)
            assert 0.3 < longer < 0.7, (user_type, conflict, longer)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_types": 3}, "num_types"),
        ({"pairs_per_type": 0}, "pairs_per_type"),
        ({"conflict_share": 1.5}, "conflict_share"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate_synthetic(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
