"""Partition invariants: disjoint splits, no reuse, unseen never trains, ratios, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from fedvpa.data.partition import (
    FederatedPartition,
    largest_remainder,
    partition_pairs,
    split_sizes,
)
from fedvpa.data.schema import PreferencePair
from fedvpa.data.summary import render_summary, summarise_pairs, summarise_partition
from fedvpa.data.synthetic import generate_synthetic
from fedvpa.errors import ConfigError


@pytest.fixture(scope="module")
def pool() -> list[PreferencePair]:
    return generate_synthetic(2, pairs_per_type=1200, seed=0)


def keys(pairs: list[PreferencePair]) -> list[tuple[str, str | None]]:
    return [(p.source, p.user_type) for p in pairs]


def test_invariants(pool: list[PreferencePair]) -> None:
    part = partition_pairs(pool, num_clients=60, pairs_per_client=(4, 32), seed=1)
    assert len(part.clients) == 60 and part.user_types == ["harmless", "helpful"]
    used: list[tuple[str, str | None]] = []
    for c in part.clients:
        assert 4 <= c.num_pairs <= 32
        assert c.context and c.test, "every client has context and test pairs"
        assert all(p.user_type == c.user_type for p in c.context + c.train + c.test)
        split_keys = [set(keys(c.context)), set(keys(c.train)), set(keys(c.test))]
        assert sum(map(len, split_keys)) == c.num_pairs  # disjoint, no repeats
        used += keys(c.context + c.train + c.test)
        if c.unseen:
            assert c.train == []
        else:
            assert c.train
    assert len(used) == len(set(used)), "a pair was dealt twice"
    assert [c.client_id for c in part.clients] == list(range(60))


def test_unseen_clients_are_stratified_and_never_seen(pool: list[PreferencePair]) -> None:
    part = partition_pairs(pool, num_clients=50, fraction_unseen=0.2, seed=0)
    assert Counter(c.user_type for c in part.unseen) == {"harmless": 5, "helpful": 5}
    seen_ids = {c.client_id for c in part.seen}
    assert not seen_ids & {c.client_id for c in part.unseen}
    assert len(part.seen) + len(part.unseen) == 50
    unseen_pairs = {p.source + str(p.user_type) for c in part.unseen for p in c.context + c.test}
    seen_pairs = {
        p.source + str(p.user_type) for c in part.seen for p in c.context + c.train + c.test
    }
    assert not unseen_pairs & seen_pairs


def test_type_ratio(pool: list[PreferencePair]) -> None:
    part = partition_pairs(pool, num_clients=10, type_ratio=(0.3, 0.7), seed=0)
    assert Counter(c.user_type for c in part.clients) == {"harmless": 3, "helpful": 7}
    default = partition_pairs(pool, num_clients=11, seed=0)
    assert Counter(c.user_type for c in default.clients) == {"harmless": 6, "helpful": 5}


def test_deterministic_by_seed(pool: list[PreferencePair]) -> None:
    a = partition_pairs(pool, num_clients=20, pairs_per_client=(4, 16), seed=5)
    b = partition_pairs(pool, num_clients=20, pairs_per_client=(4, 16), seed=5)
    c = partition_pairs(pool, num_clients=20, pairs_per_client=(4, 16), seed=6)
    assert a == b and a != c


def test_split_rounding() -> None:
    f = (0.5, 0.25, 0.25)
    assert split_sizes(3, f) == [1, 1, 1]
    assert split_sizes(4, f) == [2, 1, 1]
    assert split_sizes(5, f) == [3, 1, 1]
    assert split_sizes(16, f) == [8, 4, 4]
    assert split_sizes(64, f) == [32, 16, 16]
    assert split_sizes(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_sizes(6, (0.5, 0.0, 0.5)) == [3, 0, 3]
    for n in range(3, 65):
        assert sum(split_sizes(n, f)) == n and min(split_sizes(n, f)) >= 1
    assert largest_remainder(100, (0.3, 0.7)) == [30, 70]
    assert largest_remainder(5, (1, 1)) == [3, 2]


def test_pool_too_small_names_need_and_supply() -> None:
    small = generate_synthetic(2, pairs_per_type=50, seed=0)
    with pytest.raises(ConfigError, match=r"'harmless' needs 80 pairs for 5 clients .* has 50"):
        partition_pairs(small, num_clients=10, pairs_per_client=16)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pairs_per_client": 2}, "pairs_per_client"),
        ({"pairs_per_client": (8, 4)}, "pairs_per_client"),
        ({"pairs_per_client": (2, 8)}, "pairs_per_client"),
        ({"pairs_per_client": 4.5}, "pairs_per_client"),
        ({"num_clients": 0}, "num_clients"),
        ({"type_ratio": (1.0,)}, "type_ratio"),
        ({"type_ratio": (-1.0, 2.0)}, "type_ratio"),
        ({"split": (0.5, 0.5)}, "split"),
        ({"split": (0.5, 0.3, 0.3)}, "split"),
        ({"split": (0.0, 0.5, 0.5)}, "split"),
        ({"fraction_unseen": 1.0}, "fraction_unseen"),
    ],
)
def test_bad_config(pool: list[PreferencePair], kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        partition_pairs(pool, **{"num_clients": 10, **kwargs})  # type: ignore[arg-type]
    assert info.value.field == field


def test_untyped_and_mixed_pools() -> None:
    untyped = [PreferencePair("q", f"a{i}", f"b{i}", 0, source=str(i)) for i in range(40)]
    part = partition_pairs(untyped, num_clients=4, pairs_per_client=8, fraction_unseen=0.0)
    assert part.user_types == ["all"] and not part.unseen
    mixed = [*untyped, PreferencePair("q", "x", "y", 0, user_type="helpful")]
    with pytest.raises(ConfigError, match="no user type"):
        partition_pairs(mixed, num_clients=2, pairs_per_client=4)


def test_summaries_never_contain_text(pool: list[PreferencePair]) -> None:
    part = partition_pairs(pool, num_clients=20, pairs_per_client=(4, 8), seed=0)
    assert isinstance(part, FederatedPartition)
    psum = summarise_partition(part)
    assert psum["clients"] == 20 and psum["unseen_clients"] == 4
    sizes = sum(c.num_pairs for c in part.clients)
    assert sum(psum["pairs_per_split"].values()) == sizes
    assert psum["user_types"]["helpful"]["seen"] == 8
    s = summarise_pairs(pool)
    assert s["rows"] == 2400 and s["user_types"] == {"harmless": 1200, "helpful": 1200}
    assert s["conflict_share"] == 0.5 and s["label_disagreement_share"] == 0.5
    text = render_summary(s, "pairs") + render_summary(psum, "partition")
    assert "user_types.helpful" in text and "pairs_per_split.context" in text
    sample = {w for p in pool[:200] for w in (p.response_a + p.response_b).split() if len(w) > 7}
    assert not any(w in text for w in sample)
