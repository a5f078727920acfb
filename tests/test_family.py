"""The pluralistic data family: members, clean labels from utilities, noise, emission, configs."""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from fedvpa.config import DataConfig, load_toml
from fedvpa.data.family import (
    AXES,
    DOMAINS,
    FAMILY,
    FamilyComparison,
    family_comparisons,
    family_user_types,
    generate_family,
)
from fedvpa.data.readers import read_pairs
from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic_text import TOPICS
from fedvpa.data.transcript import last_human_turn
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig, load_pairs, make_partition, synthetic_pairs_per_type

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(FAMILY)
N = 600  # comparisons per member in the shared fixtures below

EXPECTED_TYPES = {
    "plural-2": ["careful", "direct"],
    "plural-3": ["casual-abstract", "casual-concrete", "formal-concrete"],
    "plural-4": ["casual-brief", "casual-thorough", "formal-brief", "formal-thorough"],
    "plural-6": [
        "casual-brief-abstract",
        "casual-brief-concrete",
        "casual-thorough-abstract",
        "formal-brief-concrete",
        "formal-thorough-abstract",
        "formal-thorough-concrete",
    ],
}


@cache
def data(member: str, seed: int = 0) -> tuple[list[FamilyComparison], list[PreferencePair]]:
    """Clean comparisons and emitted pairs of one member (generated once per test session)."""
    return family_comparisons(member, N, seed), generate_family(member, N, seed)


def clean_label(comp: FamilyComparison, pair: PreferencePair) -> int:
    """The pair's label had the type's clean preference not been flipped (A/B order applied)."""
    preferred_text = comp.first if comp.prefers[pair.user_type] == 0 else comp.second
    return 0 if pair.response_a == preferred_text else 1


def index(pair: PreferencePair) -> int:
    return int(pair.source.rsplit(":", 1)[1])


def sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text))


# ------------------------------------------------------------------------------ registry


def test_members_and_type_names() -> None:
    assert MEMBERS == ["plural-2", "plural-3", "plural-4", "plural-6"]
    for member, types in EXPECTED_TYPES.items():
        assert family_user_types(member) == types
    assert FAMILY["plural-2"].label_noise == 0.15
    assert FAMILY["plural-3"].label_noise == 0.05
    assert FAMILY["plural-4"].label_noise == FAMILY["plural-6"].label_noise == 0.1
    assert FAMILY["plural-6"].axes == ("tone", "depth", "examples")
    for spec in FAMILY.values():
        assert len(set(spec.axis_weights)) == len(spec.axes)  # distinct: no ties
        for axis in spec.axes:  # every member axis splits the types
            assert {spec.poles_of(t)[axis] for t in spec.type_names} == set(AXES[axis])


def test_unknown_member_and_bad_size() -> None:
    with pytest.raises(ConfigError) as info:
        generate_family("plural-5")
    assert info.value.field == "data"
    assert all(name in str(info.value) for name in MEMBERS)
    with pytest.raises(ConfigError) as info:
        family_user_types("nope")
    assert info.value.field == "data"
    with pytest.raises(ConfigError) as info:
        generate_family("plural-4", pairs_per_type=0)
    assert info.value.field == "pairs_per_type"


# ------------------------------------------------------------------------------ emission


@pytest.mark.parametrize("member", MEMBERS)
def test_shape_sources_and_conflict_flags(member: str) -> None:
    comps, pairs = data(member)
    types = family_user_types(member)
    assert len(comps) == N and len(pairs) == N * len(types)
    assert Counter(p.user_type for p in pairs) == dict.fromkeys(types, N)
    assert {p.source for p in pairs} == {f"{member}:seed0:{k}" for k in range(N)}
    assert all(p.user is None for p in pairs)
    for p in pairs:
        comp = comps[index(p)]
        assert {p.response_a, p.response_b} == {comp.first, comp.second}
        assert p.prompt == comp.prompt
        # conflict = the clean labels differ between the member's types
        assert p.conflict is comp.conflict is (len(set(comp.prefers.values())) > 1)
    # exact duplicate comparisons are redrawn
    assert len({(c.prompt, c.first, c.second) for c in comps}) == N


def test_deterministic_by_seed() -> None:
    a = generate_family("plural-4", 150, seed=7)
    assert a == generate_family("plural-4", 150, seed=7)
    assert a != generate_family("plural-4", 150, seed=8)


@pytest.mark.parametrize("member", MEMBERS)
def test_kind_shares(member: str) -> None:
    comps, _ = data(member)
    kinds = Counter(c.kind for c in comps)
    if len(FAMILY[member].axes) >= 2:
        assert kinds == {"one-axis": 0.6 * N, "two-axis": 0.15 * N, "quality": 0.25 * N}
    else:  # one axis only: the two-axis share becomes one-axis
        assert kinds == {"one-axis": 0.75 * N, "quality": 0.25 * N}


@pytest.mark.parametrize("member", MEMBERS)
def test_flip_rate_matches_label_noise(member: str) -> None:
    comps, pairs = data(member)
    flips = sum(p.preferred != clean_label(comps[index(p)], p) for p in pairs)
    noise = FAMILY[member].label_noise
    sd = math.sqrt(noise * (1 - noise) / len(pairs))
    assert abs(flips / len(pairs) - noise) < 4 * sd, (flips / len(pairs), noise)
    # independent per type: every type sees flips, at about the same rate
    for t in family_user_types(member):
        sub = [p for p in pairs if p.user_type == t]
        rate = sum(p.preferred != clean_label(comps[index(p)], p) for p in sub) / len(sub)
        assert abs(rate - noise) < 5 * math.sqrt(noise * (1 - noise) / len(sub))


@pytest.mark.parametrize("member", MEMBERS)
def test_both_orders_occur(member: str) -> None:
    comps, pairs = data(member)
    first_is_a = sum(p.response_a == comps[index(p)].first for p in pairs) / len(pairs)
    assert 0.45 < first_is_a < 0.55
    share_a = sum(p.preferred == 0 for p in pairs) / len(pairs)
    assert 0.45 < share_a < 0.55


# ---------------------------------------------------------------------------- clean labels


@pytest.mark.parametrize("member", MEMBERS)
def test_quality_comparisons_are_agreed_by_every_type(member: str) -> None:
    comps, _ = data(member)
    quality = [c for c in comps if c.kind == "quality"]
    assert {c.flaw for c in quality} == {"off-topic", "wrong", "dismissive", "unhelpful"}
    for c in quality:
        assert c.style_first == c.style_second  # same style on every axis
        assert set(c.prefers.values()) == {0}  # everyone prefers the good reply
        assert not c.conflict


@pytest.mark.parametrize("member", MEMBERS)
def test_one_axis_comparisons_split_types_by_that_axis(member: str) -> None:
    spec = FAMILY[member]
    comps, _ = data(member)
    one_axis = [c for c in comps if c.kind == "one-axis"]
    assert {c.axes[0] for c in one_axis} == set(spec.axes)  # every axis gets compared
    for c in one_axis:
        (axis,) = c.axes
        differing = [a for a in AXES if c.style_first[a] != c.style_second[a]]
        assert differing == [axis]  # other poles (nuisance axes included) are shared
        poles = {t: spec.poles_of(t)[axis] for t in spec.type_names}
        for t in spec.type_names:
            assert c.prefers[t] == (0 if c.style_first[axis] == poles[t] else 1)
            for u in spec.type_names:
                assert (c.prefers[t] == c.prefers[u]) is (poles[t] == poles[u])
        assert c.conflict


@pytest.mark.parametrize("member", ["plural-3", "plural-4", "plural-6"])
def test_two_axis_comparisons_follow_the_heavier_axis(member: str) -> None:
    spec = FAMILY[member]
    weight = dict(zip(spec.axes, spec.axis_weights, strict=True))
    comps, _ = data(member)
    two_axis = [c for c in comps if c.kind == "two-axis"]
    assert two_axis
    for c in two_axis:
        assert len(c.axes) == 2
        assert [a for a in AXES if c.style_first[a] != c.style_second[a]] == sorted(
            c.axes, key=list(AXES).index
        )
        heavier = max(c.axes, key=weight.__getitem__)
        for t in spec.type_names:
            assert c.prefers[t] == (0 if c.style_first[heavier] == spec.poles_of(t)[heavier] else 1)


# ------------------------------------------------------------------------------- rendering


def test_domains_and_variety() -> None:
    assert len(DOMAINS) >= 20
    assert len({d.noun for d in DOMAINS}) == len(DOMAINS)
    assert not {d.noun for d in DOMAINS} & {t.name for t in TOPICS}  # not the embedded topics
    embedded = {s for t in TOPICS for s in (*t.steps, *t.tips, *t.everyday, *t.risky)}
    for d in DOMAINS:
        assert len(d.tasks) >= 4 and len(d.advice) >= 8 and len(d.examples) >= 4
        assert len(d.wrong) >= 3
        assert not {a for a, _ in d.advice} & embedded
        assert all(re.search(r"\d", e) and "{name}" in e for e in d.examples)
    comps, pairs = data("plural-6")
    replies = [r for c in comps for r in (c.first, c.second)]
    assert len(set(replies)) >= 0.97 * len(replies)
    assert len({c.prompt for c in comps}) >= 0.8 * len(comps)
    assert all("{" not in r and "}" not in r for r in replies)
    asked = {d.noun for d in DOMAINS for c in comps if any(t in c.prompt for t in d.tasks)}
    assert len(asked) == len(DOMAINS)
    assert all(p.prompt.endswith("\n\nAssistant:") and last_human_turn(p.prompt) for p in pairs)


def test_poles_are_visible_in_the_text() -> None:
    comps, _ = data("plural-6")
    experts = {d.expert for d in DOMAINS}
    for c in comps:
        for style, text in ((c.style_first, c.first), (c.style_second, c.second)):
            n = sentences(text)
            assert (n == 2) if style["depth"] == "brief" else (4 <= n <= 6), (n, text)
            if style["tone"] == "formal":
                assert "!" not in text and "you'" not in text.lower()
            else:
                assert "!" in text or "'" in text
            named = any(e in text for e in experts)
            assert named is (style["caution"] == "careful")


def test_length_does_not_give_away_other_axes() -> None:
    comps, _ = data("plural-6")
    rows = [(c.style_first, c.first) for c in comps] + [(c.style_second, c.second) for c in comps]
    for depth in AXES["depth"]:
        sub = [(s, len(t.split())) for s, t in rows if s["depth"] == depth]
        for axis in ("tone", "examples", "caution"):
            means = [
                sum(w for s, w in sub if s[axis] == pole) / sum(s[axis] == pole for s, _ in sub)
                for pole in AXES[axis]
            ]
            assert abs(means[0] - means[1]) / max(means) < 0.06, (depth, axis, means)
    quality = [c for c in comps if c.kind == "quality"]
    longer = sum(len(c.first.split()) > len(c.second.split()) for c in quality) / len(quality)
    assert 0.35 < longer < 0.65


# -------------------------------------------------------------------------- wiring, configs


@pytest.mark.parametrize("member", MEMBERS)
def test_experiment_config_parses_and_partitions(member: str) -> None:
    flat = load_toml(ROOT / "conf" / f"{member}.toml")
    exp = ExperimentConfig.from_flat(flat, source=member)
    assert exp.data.data == member
    assert exp.federation.clients_per_round == 10 and exp.federation.num_server_rounds == 50
    partition = make_partition(exp.data, seed=0)
    assert len(partition.clients) == exp.data.num_clients
    assert partition.user_types == EXPECTED_TYPES[member]
    counts = partition.config["clients_per_type"]
    if exp.data.type_ratio:  # the ratio is read in sorted type order
        ratio = dict(zip(EXPECTED_TYPES[member], exp.data.type_ratio, strict=True))
        assert max(counts, key=counts.__getitem__) == max(ratio, key=ratio.__getitem__)
        for t, r in ratio.items():
            assert abs(counts[t] - r * exp.data.num_clients) <= 1


def test_load_pairs_sizes_by_the_largest_type_share() -> None:
    cfg = DataConfig(
        data="plural-3",
        num_clients=40,
        pairs_per_client=8,
        max_pairs_per_client=64,
        type_ratio=(0.8, 0.1, 0.1),
    )
    per_type = synthetic_pairs_per_type(cfg, 3)
    assert per_type >= 32 * 64  # 32 clients of the largest type, 64 pairs at most each
    pairs, report = load_pairs(cfg, seed=1)
    assert len(pairs) == report["rows"] == 3 * per_type
    assert len(make_partition(cfg, seed=1).clients) == 40


def test_read_pairs_generates_family_members_by_name() -> None:
    pairs = read_pairs("plural-2", seed=3)
    assert Counter(p.user_type for p in pairs) == {"careful": 1200, "direct": 1200}
    assert pairs == generate_family("plural-2", seed=3)


def test_tuning_rule_is_documented_verbatim() -> None:
    text = " ".join((ROOT / "docs" / "data-family.md").read_text(encoding="utf-8").split())
    rule = (
        "Tuning rule (fixed 2026-12-01, before any tuning): defaults may be chosen on `plural-4` "
        "and `synthetic-4` only. `plural-2`, `plural-3`, `plural-6` and `synthetic-2` are "
        "report-only: their results are measured with the defaults chosen elsewhere and never "
        "used to pick a setting."
    )
    assert rule in text
