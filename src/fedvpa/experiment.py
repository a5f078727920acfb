"""From a data configuration to embedded client tensors: the preparation every run shares.

Runs, comparisons and the Flower clients all need the same deterministic chain
(read or generate pairs -> partition -> embed through the cache). Keeping it in one place means a
comparison of methods is guaranteed to use the same clients and the same vectors.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvpa.config import DataConfig, EmbeddingConfig, FederationSettings, from_flat, to_flat
from fedvpa.data.family import FAMILY, generate_family
from fedvpa.data.partition import (
    FederatedPartition,
    partition_by_user,
    partition_pairs,
    resolve_partition,
)
from fedvpa.data.readers import ReadReport, read_pairs
from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic import generate_synthetic
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError

if TYPE_CHECKING:
    from fedvpa.methods.local_config import LocalConfig
    from fedvpa.model.config import ModelConfig

SYNTHETIC = {"synthetic-2": 2, "synthetic-4": 4}
# Every data name that is generated rather than read, with its number of user types: the
# embedded synthetic sets and the members of the pluralistic family (fedvpa.data.family).
GENERATED: dict[str, int] = {
    **SYNTHETIC,
    **{name: len(member.types) for name, member in FAMILY.items()},
}


def load_pairs(cfg: DataConfig, seed: int) -> tuple[list[PreferencePair], dict[str, object]]:
    """The pairs a data config names, plus a small report of what was read or skipped."""
    if cfg.data in SYNTHETIC:
        pairs = generate_synthetic(
            num_types=SYNTHETIC[cfg.data],
            pairs_per_type=synthetic_pairs_per_type(cfg, SYNTHETIC[cfg.data]),
            conflict_share=cfg.conflict_share,
            seed=seed,
        )
        return pairs, {"rows": len(pairs), "kept": len(pairs), "skipped": 0}
    if cfg.data in FAMILY:
        # conflict-share does not apply: a member's comparison kinds have fixed shares.
        pairs = generate_family(
            cfg.data,
            pairs_per_type=synthetic_pairs_per_type(cfg, GENERATED[cfg.data]),
            seed=seed,
        )
        return pairs, {"rows": len(pairs), "kept": len(pairs), "skipped": 0}
    report = ReadReport(source=cfg.data, format=cfg.data_format)
    pairs = read_pairs(
        cfg.data, cfg.data_format, seed=seed, skip_invalid=cfg.skip_invalid, report=report
    )
    return pairs, {
        "source": report.source,
        "format": report.format,
        "rows": report.rows,
        "kept": report.kept,
        "skipped": report.skipped,
        "reasons": dict(report.reasons),
    }


def synthetic_pairs_per_type(cfg: DataConfig, num_types: int) -> int:
    """Enough generated pairs per user type for the partition asked for (0 = automatic).

    Used for every generated data set (``GENERATED``: synthetic-2/4 and the plural-* family).
    Sized for the largest type share, so an uneven ``type_ratio`` still fits: that type needs at
    most ``ceil(num_clients * share)`` clients of at most ``largest`` pairs each.
    """
    if cfg.synthetic_pairs_per_type:
        return _generated_size(cfg.synthetic_pairs_per_type, "synthetic-pairs-per-type")
    largest = max(cfg.pairs_per_client, cfg.max_pairs_per_client)
    share = max(cfg.type_ratio) / sum(cfg.type_ratio) if cfg.type_ratio else 1.0 / num_types
    needed = int(cfg.num_clients * share * largest * 1.2) + 64
    # The bound itself, for the rare tiny-share, huge-client case the 20 % margin misses (it
    # leaves every usual configuration's size, and so its data, unchanged).
    bound = math.ceil(cfg.num_clients * share + 1e-9) * largest
    return _generated_size(max(1200, needed, bound), "num-clients")


# Far above any partition that can be embedded and trained (100,000 clients of 16 pairs need
# under 1e6 per type); a larger request only ends in a MemoryError or OverflowError traceback
# inside the generator instead of a line naming the key.
MAX_GENERATED_PAIRS_PER_TYPE = 1_000_000


def _generated_size(pairs_per_type: int, key: str) -> int:
    if pairs_per_type > MAX_GENERATED_PAIRS_PER_TYPE:
        raise ConfigError(
            f"needs {pairs_per_type} generated pairs per user type, more than the "
            f"{MAX_GENERATED_PAIRS_PER_TYPE} a generated data set can have "
            "(lower num-clients, pairs-per-client or synthetic-pairs-per-type)",
            field=key,
        )
    return pairs_per_type


def make_partition(
    cfg: DataConfig, seed: int, pairs: list[PreferencePair] | None = None
) -> FederatedPartition:
    """The federated split of ``cfg``'s pairs (read again unless the caller has them)."""
    if pairs is None:
        pairs, _ = load_pairs(cfg, seed)
    if resolve_partition(cfg.partition, pairs) == "users":
        return partition_by_user(
            pairs, split=cfg.split, fraction_unseen=cfg.fraction_unseen, seed=seed
        )
    return partition_pairs(
        pairs,
        num_clients=cfg.num_clients,
        pairs_per_client=cfg.pairs_range,
        type_ratio=cfg.type_ratio or None,
        split=cfg.split,
        fraction_unseen=cfg.fraction_unseen,
        seed=seed,
    )


@dataclass
class PreparedData:
    partition: FederatedPartition
    clients: list[ClientTensors]
    path: Path  # where the client tensors were saved (what Flower clients load)


def data_key(
    data_cfg: DataConfig, emb_cfg: EmbeddingConfig, seed: int, partition: str = "types"
) -> str:
    """A stable id of (data, partition, backbone, seed): prepared tensors are reused under it.

    ``partition`` is the resolved way pairs became clients; the ``partition`` key itself is
    left out, so that the dealt partitions of every version keep their key (a resumed run's
    identity holds the tensors' path)."""
    flat = {k: v for k, v in to_flat(data_cfg).items() if k != "partition"}
    if partition != "types":
        flat["partition"] = partition
    blob = json.dumps({"data": flat, "backbone": emb_cfg.backbone, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_clients(
    data_cfg: DataConfig,
    emb_cfg: EmbeddingConfig,
    seed: int,
    *,
    progress: bool = True,
) -> PreparedData:
    """Partition and embed (through the cache), saving the client tensors once per data key."""
    from fedvpa.embeddings.backbone import backbone_identity, make_backbone
    from fedvpa.embeddings.cache import EmbeddingCache
    from fedvpa.embeddings.pipeline import embed_partition, load_client_tensors, save_client_tensors

    partition = make_partition(data_cfg, seed)
    root = emb_cfg.resolved_cache_dir()
    mode = str(partition.config.get("partition", "types"))
    path = root / "clients" / f"{data_key(data_cfg, emb_cfg, seed, mode)}.pt"
    # The key names the data by its path and the backbone by its spec, so the tensors of a data
    # file edited in place, or of a local checkpoint rewritten in place, would be reused under it
    # (measured for the data: the old embeddings with the new texts' partition). A digest of the
    # partition and the backbone's identity next to the tensors says what they were built from;
    # a missing or other one (the file or checkpoint changed, or tensors of a version before the
    # digest) rebuilds them in place, so the path, which a resumed run's identity holds, stays.
    digest = partition_digest(partition, backbone_identity(emb_cfg.backbone))
    stamp = path.with_name(path.name + ".partition")
    if path.is_file():
        current = stamp.is_file() and stamp.read_text().strip() == digest
        if current:
            try:
                return PreparedData(partition, load_client_tensors(path), path)
            except Exception:  # a corrupt file is rebuilt from the embedding cache
                pass
        path.unlink(missing_ok=True)
    cache = EmbeddingCache(root / "embeddings")
    clients = embed_partition(
        partition,
        make_backbone(emb_cfg.backbone),
        cache,
        batch_size=emb_cfg.embed_batch_size,
        progress=progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    save_client_tensors(clients, path)
    stamp.write_text(digest + "\n")  # written last: tensors without it are never trusted
    return PreparedData(partition, clients, path)


def partition_digest(partition: FederatedPartition, backbone: str = "") -> str:
    """What prepared client tensors are built from: every client's id, type, role and pairs
    (texts and label, split by split, in order), and the backbone's identity
    (``embeddings.backbone.backbone_identity``). Equal digests mean equal tensors."""
    h = hashlib.sha256(backbone.encode() + b"\x1d")
    for c in partition.clients:
        h.update(json.dumps([c.client_id, c.user_type, c.unseen]).encode())
        for split in (c.context, c.train, c.test):
            h.update(b"\x1e")
            for p in split:
                h.update(json.dumps([p.prompt, p.response_a, p.response_b, p.preferred]).encode())
    return h.hexdigest()


# Keys a method derives rather than reads: the backbone fixes input-dim, num-server-rounds
# fixes the schedules' num-rounds. Giving them is refused as an unknown key.
DERIVED_KEYS = frozenset({"input-dim", "num-rounds"})


def _group_keys(cls: type) -> set[str]:
    return {f.name.replace("_", "-") for f in fields(cls)} - DERIVED_KEYS


def key_groups() -> dict[str, set[str]]:
    """Every configuration key, by the dataclass that owns it (the one source of truth)."""
    from fedvpa.methods.local_config import LocalConfig
    from fedvpa.model.config import ModelConfig

    return {
        "data": _group_keys(DataConfig),
        "embedding": _group_keys(EmbeddingConfig),
        "federation": _group_keys(FederationSettings),
        "local": _group_keys(LocalConfig),
        "model": _group_keys(ModelConfig),
    }


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment, from one flat table of keys (a ``conf/*.toml``, ``[tool.flwr.app.config]``
    or ``config.json``, plus options and ``--set``). Every group is typed and validated here,
    before any data is read or any folder is written."""

    data: DataConfig
    embedding: EmbeddingConfig
    federation: FederationSettings
    local: LocalConfig
    model: ModelConfig  # input-dim is a placeholder until the backbone is known
    explicit: frozenset[str] = frozenset()  # the keys the user gave (for method checks)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
        from fedvpa.methods.local_config import LocalConfig
        from fedvpa.model.config import ModelConfig

        groups = key_groups()
        known = set().union(*groups.values())
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s): {', '.join(unknown)}", path=source, field=unknown[0]
            )
        data = from_flat(DataConfig, flat, source=source)
        federation = from_flat(FederationSettings, flat, source=source)
        local = from_flat(LocalConfig, flat, source=source)
        local = replace(local, num_rounds=federation.num_server_rounds)
        model = from_flat(ModelConfig, flat, source=source)
        if federation.clients_per_round > data.num_clients:
            raise ConfigError(
                f"{federation.clients_per_round} clients per round but only "
                f"{data.num_clients} clients",
                path=source,
                field="clients-per-round",
            )
        return cls(
            data=data,
            embedding=from_flat(EmbeddingConfig, flat, source=source),
            federation=federation,
            local=local,
            model=model,
            explicit=frozenset(flat),
        )

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value (defaults included): what ``config.json`` records."""
        out: dict[str, Any] = {}
        for group in (self.data, self.embedding, self.federation, self.local, self.model):
            out.update(to_flat(group))
        # batched-clients is recorded only when on (see LocalConfig.to_dict)
        if not out.get("batched-clients"):
            out.pop("batched-clients", None)
        return {k: v for k, v in out.items() if k not in DERIVED_KEYS}

    def with_seed(self, seed: int) -> ExperimentConfig:
        return replace(self, federation=replace(self.federation, seed=int(seed)))

    def method_kwargs(self, input_dim: int) -> dict[str, Any]:
        """What a method factory receives: every model and local setting, JSON-serialisable
        (it travels to the clients inside the messages)."""
        model = {**self.model.to_dict(), "input_dim": input_dim}
        return json.loads(json.dumps({"model": model, "local": self.local.to_dict()}))

    def user_model_settings(self) -> dict[str, Any]:
        """The model and local settings the user gave explicitly, by field name."""
        flat = self.to_flat()
        groups = key_groups()
        mine = (groups["model"] | groups["local"]) & self.explicit
        return {k.replace("-", "_"): flat[k] for k in sorted(mine) if k in flat}


def check_clients_per_round(exp: ExperimentConfig, clients: Sequence[ClientTensors]) -> None:
    """The combination only the clients can tell: enough seen clients to sample from (a
    larger clients-per-round used to be accepted and silently sample all of them)."""
    seen = sum(not c.unseen for c in clients)
    if exp.federation.clients_per_round > seen:
        raise ConfigError(
            f"{exp.federation.clients_per_round} clients per round but the partition has "
            f"only {seen} seen clients (fraction-unseen {exp.data.fraction_unseen})",
            field="clients-per-round",
        )


def check_privacy_budget(
    exp: ExperimentConfig, methods: Sequence[str], clients: Sequence[ClientTensors]
) -> None:
    """Refuse, before the folder, a DP run whose ``dp-max-epsilon`` not even round 1 fits: it
    used to run no round, write a folder of dashes and exit 0."""
    fed = exp.federation
    if not fed.dp_enabled or fed.dp_max_epsilon <= 0 or fed.secure_aggregation:
        return  # SecAgg+ plans its rounds itself (runner.secure_settings)
    from fedvpa.federation.registry import create_method
    from fedvpa.privacy.guard import ClientLevelDP

    seen = sum(not c.unseen for c in clients)
    for name in dict.fromkeys(methods):
        method = create_method(name, exp.method_kwargs(clients[0].context.dim))
        guard = ClientLevelDP(method, replace(fed, method=name), seen)
        if not guard.allows(1):
            first = guard.accountant.epsilon(method.stats_releases(1))
            raise ConfigError(
                f"round 1 of {name} alone spends epsilon {first:.3f}, above dp-max-epsilon "
                f"{fed.dp_max_epsilon:g}: not even one round fits; raise dp-max-epsilon or "
                "dp-noise-multiplier",
                field="dp-max-epsilon",
            )


def default_flat() -> dict[str, Any]:
    """Every key with its default, in the scalar form Flower's run config holds."""
    from fedvpa.config import flower_value
    from fedvpa.methods.local_config import LocalConfig
    from fedvpa.model.config import ModelConfig

    flat: dict[str, Any] = {}
    for group in (
        DataConfig(),
        EmbeddingConfig(),
        FederationSettings(),
        LocalConfig(),
        ModelConfig(),
    ):
        flat.update(to_flat(group))  # every key, also those recorded only when set
    return {k: flower_value(v) for k, v in flat.items() if k not in DERIVED_KEYS}


def render_key_table() -> str:
    """A Markdown table of every key: group, default and the comment at its declaration."""
    from fedvpa.config import field_comments
    from fedvpa.methods.local_config import LocalConfig
    from fedvpa.model.config import ModelConfig

    owners = {
        "data": DataConfig,
        "embedding": EmbeddingConfig,
        "federation": FederationSettings,
        "local": LocalConfig,
        "model": ModelConfig,
    }
    defaults = default_flat()
    rows = ["| key | group | default | meaning |", "|---|---|---|---|"]
    for group, keys in key_groups().items():
        comments = field_comments(owners[group])
        for key in (k for k in defaults if k in keys):
            meaning = comments.get(key.replace("-", "_"), "").replace("|", "/")
            rows.append(f"| `{key}` | {group} | `{_toml_scalar(defaults[key])}` | {meaning} |")
    return "\n".join(rows) + "\n"


def render_flower_table() -> str:
    """``[tool.flwr.app.config]`` with every key and its default, grouped as declared: what
    ``pyproject.toml`` holds (a test keeps the two equal), so ``flwr run --run-config`` accepts
    every key ``fedvpa run`` does."""
    defaults = default_flat()
    lines = ["[tool.flwr.app.config]"]
    for group, keys in key_groups().items():
        lines.append(f"# {group}")
        for key in (k for k in defaults if k in keys):
            lines.append(f"{key} = {_toml_scalar(defaults[key])}")
    return "\n".join(lines) + "\n"


def _toml_scalar(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)
