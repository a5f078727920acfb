"""Partition invariants: disjoint splits, no reuse, unseen never trains, ratios, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from fedvpa.data.partition import (
    FederatedPartition,
    largest_remainder,
    partition_by_user,
    partition_pairs,
    resolve_partition,
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


# ------------------------------------------------------------------- one client per user


def _named(pool: list[PreferencePair], sizes: dict[str, tuple[str, int]]) -> list[PreferencePair]:
    """Pairs of ``pool`` given to users: ``{user: (type, pairs)}``."""
    from dataclasses import replace

    by_type: dict[str | None, list[PreferencePair]] = {}
    for p in pool:
        by_type.setdefault(p.user_type, []).append(p)
    out = []
    for user, (t, n) in sizes.items():
        out += [replace(by_type[t].pop(), user=user) for _ in range(n)]
    return out


def test_a_client_per_user_holds_exactly_its_users_pairs(pool: list[PreferencePair]) -> None:
    types = sorted({p.user_type for p in pool})
    sizes = {f"u{i:02d}": (types[i % 2], 3 + (i * 7) % 30) for i in range(40)}
    sizes["tiny"] = (types[0], 2)  # cannot fill three splits: left out, counted
    pairs = _named(pool, sizes)
    part = partition_by_user(pairs, fraction_unseen=0.25, seed=3)
    assert len(part.clients) == 40 and part.config["users_dropped"] == 1
    owners = {id(p): p.user for p in pairs}  # the partition deals the same objects
    held: dict[str, int] = {}
    for c in part.clients:
        mine = [*c.context, *c.train, *c.test]
        users = {owners[id(p)] for p in mine}
        assert len(users) == 1  # no pair of another user
        user = users.pop()
        assert c.user_type == sizes[user][0] and len(mine) == sizes[user][1]
        held[user] = len(mine)
        assert c.context and c.test and (c.unseen or c.train)
        assert not c.unseen or not c.train
    assert set(held) == set(sizes) - {"tiny"}
    # unseen users stratified by type: round(0.25 * 20) = 5 of each
    assert Counter(c.user_type for c in part.unseen) == dict.fromkeys(types, 5)
    again = partition_by_user(pairs, fraction_unseen=0.25, seed=3)
    assert [keys(c.context) for c in again.clients] == [keys(c.context) for c in part.clients]
    other = partition_by_user(pairs, fraction_unseen=0.25, seed=4)
    assert [keys(c.context) for c in other.clients] != [keys(c.context) for c in part.clients]


def test_auto_partitions_by_user_only_where_every_pair_names_one(
    pool: list[PreferencePair],
) -> None:
    from dataclasses import replace

    types = sorted({p.user_type for p in pool})
    named = _named(pool, {"a": (types[0], 8), "b": (types[1], 8)})
    assert resolve_partition("auto", named) == "users"
    assert resolve_partition("types", named) == "types"
    assert resolve_partition("auto", pool[:50]) == "types"  # generated data names no user
    assert resolve_partition("auto", named + pool[:1]) == "types"
    assert resolve_partition("auto", named[:8]) == "types"  # one user is no federation
    mixed = [*named, replace(named[-1], user="a")]  # user a with pairs of two types
    assert resolve_partition("auto", mixed) == "types"  # explicit "users" names the problem
    short = _named(pool, {"a": (types[0], 8), "b": (types[1], 2)})
    assert resolve_partition("auto", short) == "types"
    with pytest.raises(ConfigError, match="partition"):
        resolve_partition("people", named)


def test_bad_user_data_is_one_error_naming_what(pool: list[PreferencePair]) -> None:
    from dataclasses import replace

    types = sorted({p.user_type for p in pool})
    named = _named(pool, {"a": (types[0], 8), "b": (types[1], 8)})
    mixed = [*named, replace(named[-1], user="a")]  # user a with pairs of both types
    with pytest.raises(ConfigError, match="user 'a' has pairs of 2 user types") as info:
        partition_by_user(mixed)
    assert info.value.field == "type"
    with pytest.raises(ConfigError, match="needs a user on every pair; 1 of 17"):
        partition_by_user([*named, pool[0]])
    with pytest.raises(ConfigError, match="at least 2 users"):
        partition_by_user(_named(pool, {"a": (types[0], 8), "b": (types[1], 2)}))


def test_the_prepared_tensors_key_of_a_dealt_partition_is_unchanged() -> None:
    """Tensors prepared before the partition key existed keep their path (a resumed run's
    identity holds it); a by-user partition gets another."""
    import hashlib
    import json

    from fedvpa.config import DataConfig, EmbeddingConfig, to_flat
    from fedvpa.experiment import data_key

    cfg, emb = DataConfig(), EmbeddingConfig()
    before = {k: v for k, v in to_flat(cfg).items() if k != "partition"}
    blob = json.dumps({"data": before, "backbone": emb.backbone, "seed": 0}, sort_keys=True)
    assert data_key(cfg, emb, 0) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert data_key(cfg, emb, 0, "users") != data_key(cfg, emb, 0)


def test_a_data_file_naming_its_users_is_partitioned_by_user(tmp_path) -> None:
    """The ``partition`` key end to end: ``auto`` reads the users of a generic JSONL file,
    ``types`` deals its pairs from type pools as before."""
    import json

    from fedvpa.experiment import ExperimentConfig, make_partition

    rows = [
        {
            "prompt": f"q{u}-{i}",
            "chosen": f"good {u} {i}",
            "rejected": f"bad {u} {i}",
            "type": "ab"[u % 2],
            "user": f"person-{u}",
        }  # fmt: skip
        for u in range(10)
        for i in range(5 + u)
    ]
    path = tmp_path / "named.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def clients(**keys: object) -> FederatedPartition:
        flat = {"data": str(path), "num-clients": 4, "pairs-per-client": 5, "clients-per-round": 2}
        flat.update(keys)
        return make_partition(ExperimentConfig.from_flat(flat, source="test").data, seed=0)

    by_user = clients()
    assert by_user.config["partition"] == "users" and len(by_user.clients) == 10
    assert sorted(c.num_pairs for c in by_user.clients) == list(range(5, 15))
    dealt = clients(partition="types")
    assert "partition" not in dealt.config and len(dealt.clients) == 4
    assert {c.num_pairs for c in dealt.clients} == {5}
