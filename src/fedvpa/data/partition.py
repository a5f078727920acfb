"""Split typed preference pairs into N scarce clients: context / train / test, seen / unseen.

Two ways (the ``partition`` key): deal ``num-clients`` single-type clients from per-type pools
(``partition_pairs``, for data that does not say who labelled what: the generated sets,
relabeled HH-RLHF), or one client per user of the data (``partition_by_user``, for data whose
pairs name their user: each client then holds exactly its user's pairs). The rest of this
docstring describes the first.

Each client has one user type and draws its pairs without replacement from that type's pool, so
no pair is ever seen by two clients and a client's three splits are disjoint: the ``z`` used to
score a test pair can never have read that pair's label.

Rounding, documented because the splits are tiny (4 to 64 pairs):

* clients per type: largest-remainder rounding of ``num_clients * type_ratio`` (ties go to the
  earlier type in sorted order), so the counts always sum to ``num_clients``;
* unseen clients per type: ``floor(fraction_unseen * clients_of_type + 0.5)``, stratified by type;
* a client's ``n`` pairs: largest-remainder rounding of ``n * split`` (ties to context, then
  train, then test); then every split with a positive fraction that got 0 pairs takes one from
  the largest split. With ``n >= 3`` every split is non-empty, e.g. ``n = 3 -> 1/1/1``,
  ``n = 4 -> 2/1/1``, ``n = 16 -> 8/4/4`` under the default ``(0.5, 0.25, 0.25)``.
* unseen clients never train: their train share is moved into their test split (more evaluation
  pairs; their context size stays that of a seen client of the same size).

Why not Flower Datasets' partitioners: they assign index sets of one Hugging Face ``Dataset`` to
partition ids. ``SizePartitioner`` takes consecutive, unshuffled slices and warns whenever the
data is not used up (scarcity means it never is); ``IidPartitioner`` gives equal sizes;
``NaturalIdPartitioner``/``GroupedNaturalIdPartitioner`` need a per-user id column that the
synthetic and relabeled data do not have. None handles the per-type quota, per-client random sizes,
the stratified unseen clients or the three-way split, so using one would mean converting to Arrow
and back around a 20-line draw without replacement, which is what this module does directly.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedvpa.data.schema import PreferencePair, user_types
from fedvpa.errors import ConfigError

MIN_PAIRS_PER_CLIENT = 3
UNTYPED = "all"
PARTITIONS = ("auto", "types", "users")


@dataclass(frozen=True)
class ClientData:
    """One client's pairs. Unseen clients have an empty ``train`` and never join training."""

    client_id: int
    user_type: str
    context: list[PreferencePair]
    train: list[PreferencePair]
    test: list[PreferencePair]
    unseen: bool = False

    @property
    def num_pairs(self) -> int:
        return len(self.context) + len(self.train) + len(self.test)


@dataclass(frozen=True)
class FederatedPartition:
    clients: list[ClientData]
    user_types: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seen(self) -> list[ClientData]:
        return [c for c in self.clients if not c.unseen]

    @property
    def unseen(self) -> list[ClientData]:
        return [c for c in self.clients if c.unseen]

    def to_summary(self) -> dict[str, Any]:
        """Counts only (never texts): clients and pairs per type, split sizes."""
        per_type: dict[str, dict[str, int]] = {}
        for t in self.user_types:
            cs = [c for c in self.clients if c.user_type == t]
            per_type[t] = {
                "seen": sum(not c.unseen for c in cs),
                "unseen": sum(c.unseen for c in cs),
                "pairs": sum(c.num_pairs for c in cs),
            }
        sizes = [c.num_pairs for c in self.clients]
        splits = {
            name: sum(len(getattr(c, name)) for c in self.clients)
            for name in ("context", "train", "test")
        }
        return {
            "clients": len(self.clients),
            "seen_clients": len(self.seen),
            "unseen_clients": len(self.unseen),
            "user_types": per_type,
            "pairs_per_client": {
                "min": min(sizes, default=0),
                "mean": round(sum(sizes) / len(sizes), 2) if sizes else 0.0,
                "max": max(sizes, default=0),
            },
            "pairs_per_split": splits,
            "config": dict(self.config),
        }


# ------------------------------------------------------------------------- pure helpers


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to ``weights`` that sum to ``total`` (ties to the earlier index)."""
    s = float(sum(weights))
    exact = [total * w / s for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Context/train/test sizes for ``n`` pairs; every positive-fraction split gets >= 1."""
    sizes = largest_remainder(n, fractions)
    for i, f in enumerate(fractions):
        if f > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: (sizes[j], -j))
            if sizes[donor] <= 1:
                raise ConfigError(f"{n} pairs cannot fill {len(fractions)} splits", field="split")
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


def _validate_sizes(pairs_per_client: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(pairs_per_client, int) and not isinstance(pairs_per_client, bool):
        lo = hi = pairs_per_client
    elif (
        isinstance(pairs_per_client, Sequence)
        and len(pairs_per_client) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in pairs_per_client)
    ):
        lo, hi = pairs_per_client
    else:
        raise ConfigError(
            f"pairs_per_client must be an integer or a (low, high) pair, got {pairs_per_client!r}",
            field="pairs_per_client",
        )
    if lo < MIN_PAIRS_PER_CLIENT or hi < lo:
        raise ConfigError(
            f"pairs_per_client must be >= {MIN_PAIRS_PER_CLIENT} (one pair per split) with "
            f"low <= high, got {pairs_per_client!r}",
            field="pairs_per_client",
        )
    return lo, hi


def _validate_fractions(split: Sequence[float]) -> list[float]:
    fr = [float(x) for x in split]
    if len(fr) != 3 or any(x < 0 for x in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split must be three non-negative fractions (context, train, test) summing to 1, "
            f"got {tuple(split)}",
            field="split",
        )
    if fr[0] == 0 or fr[2] == 0:
        raise ConfigError("split needs a positive context and test fraction", field="split")
    return fr


def _type_pools(pairs: Sequence[PreferencePair]) -> dict[str, list[PreferencePair]]:
    types = user_types(pairs)
    untyped = sum(p.user_type is None for p in pairs)
    if types and untyped:
        raise ConfigError(
            f"{untyped} of {len(pairs)} pairs have no user type while others do", field="user_type"
        )
    if not types:
        # Untyped data (raw HH-RLHF): one pool, so monolithic baselines can still be partitioned.
        return {UNTYPED: list(pairs)}
    pools: dict[str, list[PreferencePair]] = {t: [] for t in types}
    for p in pairs:
        pools[p.user_type].append(p)  # type: ignore[index]
    return pools


# ---------------------------------------------------------------------------- partition


def partition_pairs(
    pairs: Sequence[PreferencePair],
    num_clients: int = 100,
    pairs_per_client: int | tuple[int, int] = 16,
    type_ratio: Sequence[float] | None = None,
    split: Sequence[float] = (0.5, 0.25, 0.25),
    fraction_unseen: float = 0.2,
    seed: int = 0,
) -> FederatedPartition:
    """Deal ``pairs`` to ``num_clients`` single-type clients (see the module docstring)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(
            f"num_clients must be a positive integer, got {num_clients!r}", field="num_clients"
        )
    lo, hi = _validate_sizes(pairs_per_client)
    fractions = _validate_fractions(split)
    if not 0.0 <= fraction_unseen < 1.0:
        raise ConfigError(
            f"fraction_unseen must be in [0, 1), got {fraction_unseen}", field="fraction_unseen"
        )
    pools = _type_pools(pairs)
    types = sorted(pools)
    if type_ratio is None:
        ratio = [1.0 / len(types)] * len(types)
    else:
        ratio = [float(r) for r in type_ratio]
        if len(ratio) != len(types) or any(r < 0 for r in ratio) or sum(ratio) <= 0:
            raise ConfigError(
                f"type_ratio needs {len(types)} non-negative weights for user types {types}, "
                f"got {tuple(type_ratio)}",
                field="type_ratio",
            )
        ratio = [r / sum(ratio) for r in ratio]

    rng = random.Random(seed)
    per_type = largest_remainder(num_clients, ratio)
    plan: list[tuple[str, int, bool]] = []  # (type, size, unseen)
    for t, n_clients in zip(types, per_type, strict=True):
        sizes = [rng.randint(lo, hi) for _ in range(n_clients)]
        needed, present = sum(sizes), len(pools[t])
        if needed > present:
            raise ConfigError(
                f"user type '{t}' needs {needed} pairs for {n_clients} clients but the data has "
                f"{present}; lower num_clients or pairs_per_client",
                field="pairs_per_client",
            )
        n_unseen = math.floor(fraction_unseen * n_clients + 0.5)
        unseen_idx = set(rng.sample(range(n_clients), n_unseen))
        plan += [(t, size, i in unseen_idx) for i, size in enumerate(sizes)]
    rng.shuffle(plan)  # client ids carry no information about the type

    shuffled = {t: rng.sample(pools[t], len(pools[t])) for t in types}
    cursor = dict.fromkeys(types, 0)
    clients: list[ClientData] = []
    for cid, (t, size, unseen) in enumerate(plan):
        drawn = shuffled[t][cursor[t] : cursor[t] + size]
        cursor[t] += size
        n_ctx, n_train, _ = split_sizes(size, fractions)
        context = drawn[:n_ctx]
        train = drawn[n_ctx : n_ctx + n_train]
        test = drawn[n_ctx + n_train :]
        if unseen:
            train, test = [], train + test
        clients.append(ClientData(cid, t, context, train, test, unseen))

    config = {
        "num_clients": num_clients,
        "pairs_per_client": pairs_per_client if lo == hi else (lo, hi),
        "type_ratio": dict(zip(types, [round(r, 6) for r in ratio], strict=True)),
        "clients_per_type": dict(zip(types, per_type, strict=True)),
        "split": tuple(fractions),
        "fraction_unseen": fraction_unseen,
        "seed": seed,
    }
    return FederatedPartition(clients, types, config)


# ------------------------------------------------------------------- one client per user


def resolve_partition(mode: str, pairs: Sequence[PreferencePair]) -> str:
    """``"types"`` or ``"users"`` for ``mode``. "auto" takes one client per user where the data
    says who the clients are: every pair names its user, every user has one user type, and at
    least two users can fill the three splits; otherwise it deals from type pools, as every
    version before did (``partition = "users"`` says what is missing instead)."""
    if mode not in PARTITIONS:
        raise ConfigError(
            f"must be one of {', '.join(PARTITIONS)}, got {mode!r}", field="partition"
        )
    if mode != "auto":
        return mode
    if not pairs or any(p.user is None for p in pairs):
        return "types"
    types: dict[str, set[str | None]] = {}
    counts: Counter[str] = Counter()
    for p in pairs:
        types.setdefault(str(p.user), set()).add(p.user_type)
        counts[str(p.user)] += 1
    if any(len(t) > 1 for t in types.values()):
        return "types"
    usable = sum(n >= MIN_PAIRS_PER_CLIENT for n in counts.values())
    return "users" if usable >= 2 else "types"


def partition_by_user(
    pairs: Sequence[PreferencePair],
    split: Sequence[float] = (0.5, 0.25, 0.25),
    fraction_unseen: float = 0.2,
    seed: int = 0,
) -> FederatedPartition:
    """One client per user of the data, holding exactly that user's pairs: the federation of
    real data, where a client is a person or a device and no pair moves to another client.

    Each user needs one user type (or the data none at all) and at least
    ``MIN_PAIRS_PER_CLIENT`` pairs (one per split); users with fewer are left out and counted
    (``users_dropped``), since a client that cannot fill its splits can be neither trained nor
    scored. The splits, the rounding and the type-stratified unseen clients are those of
    :func:`partition_pairs`; the keys that size a dealt partition (``num-clients``,
    ``pairs-per-client``, ``max-pairs-per-client``, ``type-ratio``) do not apply.
    """
    fractions = _validate_fractions(split)
    if not 0.0 <= fraction_unseen < 1.0:
        raise ConfigError(
            f"fraction_unseen must be in [0, 1), got {fraction_unseen}", field="fraction_unseen"
        )
    unnamed = [p for p in pairs if p.user is None]
    if unnamed:
        raise ConfigError(
            f"partition = users needs a user on every pair; {len(unnamed)} of {len(pairs)} have "
            f"none (first: {unnamed[0].source or 'unknown line'})",
            field="user",
        )
    _type_pools(pairs)  # all typed or none
    by_user: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        by_user.setdefault(str(p.user), []).append(p)
    kept: dict[str, list[PreferencePair]] = {}
    for user in sorted(by_user):
        own = by_user[user]
        types = {p.user_type for p in own}
        if len(types) > 1:
            other = next(p for p in own if p.user_type != own[0].user_type)
            raise ConfigError(
                f"user {user!r} has pairs of {len(types)} user types "
                f"({', '.join(sorted(str(t) for t in types))}; {own[0].source or '?'} is "
                f"{own[0].user_type}, {other.source or '?'} {other.user_type}); a client holds one",
                field="type",
            )
        if len(own) >= MIN_PAIRS_PER_CLIENT:
            kept[user] = own
    if len(kept) < 2:
        raise ConfigError(
            f"partition = users needs at least 2 users with {MIN_PAIRS_PER_CLIENT} or more pairs; "
            f"the data has {len(kept)} (of {len(by_user)} users)",
            field="partition",
        )
    rng = random.Random(seed)
    users = sorted(kept)
    rng.shuffle(users)  # client ids carry no information about the user or the type
    type_of = {u: kept[u][0].user_type or UNTYPED for u in users}
    types = sorted(set(type_of.values()))
    unseen_users: set[str] = set()
    for t in types:
        members = [u for u in users if type_of[u] == t]
        n_unseen = math.floor(fraction_unseen * len(members) + 0.5)
        unseen_users |= set(rng.sample(members, n_unseen))
    clients: list[ClientData] = []
    for cid, user in enumerate(users):
        drawn = rng.sample(kept[user], len(kept[user]))
        n_ctx, n_train, _ = split_sizes(len(drawn), fractions)
        context, train = drawn[:n_ctx], drawn[n_ctx : n_ctx + n_train]
        test = drawn[n_ctx + n_train :]
        unseen = user in unseen_users
        if unseen:
            train, test = [], train + test
        clients.append(ClientData(cid, type_of[user], context, train, test, unseen))
    config = {
        "partition": "users",
        "num_clients": len(clients),
        "users_dropped": len(by_user) - len(kept),
        "clients_per_type": {t: sum(type_of[u] == t for u in users) for t in types},
        "split": tuple(fractions),
        "fraction_unseen": fraction_unseen,
        "seed": seed,
    }
    return FederatedPartition(clients, types, config)
