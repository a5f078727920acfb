"""From a data configuration to embedded client tensors: the preparation every run shares.

Runs, comparisons and the Flower clients all need the same deterministic chain
(read or generate pairs -> partition -> embed through the cache). Keeping it in one place means a
comparison of methods is guaranteed to use the same clients and the same vectors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvpa.config import DataConfig, EmbeddingConfig, from_flat, to_flat
from fedvpa.data.family import FAMILY, generate_family
from fedvpa.data.partition import FederatedPartition, partition_pairs
from fedvpa.data.readers import ReadReport, read_pairs
from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic import generate_synthetic
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError

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
        return cfg.synthetic_pairs_per_type
    largest = max(cfg.pairs_per_client, cfg.max_pairs_per_client)
    share = max(cfg.type_ratio) / sum(cfg.type_ratio) if cfg.type_ratio else 1.0 / num_types
    needed = int(cfg.num_clients * share * largest * 1.2) + 64
    # The bound itself, for the rare tiny-share, huge-client case the 20 % margin misses (it
    # leaves every usual configuration's size, and so its data, unchanged).
    bound = math.ceil(cfg.num_clients * share + 1e-9) * largest
    return max(1200, needed, bound)


def make_partition(cfg: DataConfig, seed: int) -> FederatedPartition:
    pairs, _ = load_pairs(cfg, seed)
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


def data_key(data_cfg: DataConfig, emb_cfg: EmbeddingConfig, seed: int) -> str:
    """A stable id of (data, partition, backbone, seed): prepared tensors are reused under it."""
    blob = json.dumps(
        {"data": to_flat(data_cfg), "backbone": emb_cfg.backbone, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_clients(
    data_cfg: DataConfig,
    emb_cfg: EmbeddingConfig,
    seed: int,
    *,
    progress: bool = True,
) -> PreparedData:
    """Partition and embed (through the cache), saving the client tensors once per data key."""
    from fedvpa.embeddings.backbone import make_backbone
    from fedvpa.embeddings.cache import EmbeddingCache
    from fedvpa.embeddings.pipeline import embed_partition, load_client_tensors, save_client_tensors

    partition = make_partition(data_cfg, seed)
    root = emb_cfg.resolved_cache_dir()
    path = root / "clients" / f"{data_key(data_cfg, emb_cfg, seed)}.pt"
    if path.is_file():
        try:
            return PreparedData(partition, load_client_tensors(path), path)
        except Exception:  # a corrupt or stale file is rebuilt from the embedding cache
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
    save_client_tensors(clients, path)
    return PreparedData(partition, clients, path)


@dataclass(frozen=True)
class FederationSettings:
    """How the federation runs: rounds, sampling, evaluation cadence, failure tolerance."""

    method: str = "fedvpa-gp"
    baseline: str = "fedavg-bt"  # run next to the method for comparison ("" = none)
    num_server_rounds: int = 50
    clients_per_round: int = 10
    eval_every: int = 2  # the last 10 evaluations then span rounds 32-50 (stability)
    min_reply_fraction: float = 0.5
    client_timeout: float = 600.0

    def __post_init__(self) -> None:
        for name in ("num_server_rounds", "clients_per_round", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", field=name.replace("_", "-"))
        if not 0.0 < self.min_reply_fraction <= 1.0:
            raise ConfigError("must be in (0, 1]", field="min-reply-fraction")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment, from one flat table of keys (a ``conf/*.toml`` plus overrides)."""

    data: DataConfig
    embedding: EmbeddingConfig
    federation: FederationSettings
    local: dict[str, Any]  # LocalConfig fields
    model: dict[str, Any]  # ModelConfig fields (input-dim is taken from the backbone)

    @classmethod
    def from_flat(cls, flat: dict[str, Any], source: str = "config") -> ExperimentConfig:
        from fedvpa.methods.local_config import LocalConfig
        from fedvpa.model.config import ModelConfig

        groups: dict[str, set[str]] = {
            "data": {k.replace("_", "-") for k in DataConfig.__dataclass_fields__},
            "embedding": {k.replace("_", "-") for k in EmbeddingConfig.__dataclass_fields__},
            "federation": {k.replace("_", "-") for k in FederationSettings.__dataclass_fields__},
            "local": {k.replace("_", "-") for k in LocalConfig.__dataclass_fields__},
            "model": {k.replace("_", "-") for k in ModelConfig.__dataclass_fields__},
        }
        known = set().union(*groups.values()) | {"seed"}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s): {', '.join(unknown)}", path=source, field=unknown[0]
            )
        local = {k.replace("-", "_"): v for k, v in flat.items() if k in groups["local"]}
        model = {k.replace("-", "_"): v for k, v in flat.items() if k in groups["model"]}
        local.setdefault("num_rounds", flat.get("num-server-rounds", 50))
        LocalConfig.from_dict(local)  # validate now, not in a Ray actor
        ModelConfig.from_dict(model)
        return cls(
            data=from_flat(DataConfig, flat, source=source),
            embedding=from_flat(EmbeddingConfig, flat, source=source),
            federation=from_flat(FederationSettings, flat, source=source),
            local=local,
            model=model,
        )

    def to_flat(self) -> dict[str, Any]:
        out = {**to_flat(self.data), **to_flat(self.embedding), **to_flat(self.federation)}
        out.update({k.replace("_", "-"): v for k, v in self.local.items()})
        out.update({k.replace("_", "-"): v for k, v in self.model.items()})
        return out

    def method_kwargs(self, input_dim: int) -> dict[str, Any]:
        """What the method factory receives: model and local settings, JSON-serialisable."""
        return {"model": {**self.model, "input_dim": input_dim}, "local": dict(self.local)}
