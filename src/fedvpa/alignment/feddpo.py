"""FedDPO, the paper's monolithic stage-2 baseline: each client runs DPO with a LoRA adapter on its
*own* labelled pairs, and the server averages the adapters element-wise (FedAvg of every LoRA A
and B, weighted by the clients' pair counts, as Flower's FlowerTune LLM examples do).

This module is the client's side and the bookkeeping; ``federation/feddpo_app.py`` runs it on
Flower. Unlike ``fedvpa align``'s z-conditioned DPO, nothing here is personalised: one adapter
for everybody, trained on the clients' original replies (off-policy). It is what the
personalised policy is compared against.

A client's texts never leave it: a node reads its own stage-1 partition (the same seeded split
stage 1 used, as a Flower node reads its partition by ``partition-id``), and the server only
learns which stage-1 client ids exist and are seen (the partition's metadata).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.errors import ConfigError


@dataclass(frozen=True)
class FedDPOSettings:
    """Everything a FedDPO run depends on (recorded in its fingerprint and ``feddpo.json``)."""

    stage1_run: str
    policy: str | None = None  # None = the packaged SmolLM2-135M-Instruct
    clients: int = 10  # N, the paper's FedDPO federation size
    rounds: int = 2
    local_steps: int = 3  # DPO optimiser steps per client per round
    batch_size: int = 4
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 1  # torch threads per client process
    max_length: int = 512

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "local_steps", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(
                    f"must be >= 1, got {getattr(self, name)}",
                    field="--feddpo-" + name.replace("_", "-"),
                )
        if not self.learning_rate > 0:
            raise ConfigError("must be > 0", field="--feddpo-lr")

    def to_config(self) -> dict[str, Any]:
        """As Flower ConfigRecord values (no None)."""
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> FedDPOSettings:
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        if known.get("policy") == "":
            known["policy"] = None
        return cls(**known)


# ---------------------------------------------------------------------- the clients' data


@dataclass(frozen=True)
class ClientInfo:
    """What the server may know of a stage-1 client: its id, type and pair count (no text)."""

    client_id: int
    user_type: str
    pairs: int


_PARTITIONS: dict[str, Any] = {}
_LOCK = threading.Lock()


def stage1_partition(stage1_run: str | Path) -> Any:
    """The stage-1 run's federated partition, rebuilt from its recorded data keys and seed
    (once per process: the align step and every client of a Ray actor share it)."""
    from fedvpa.alignment.preferences import open_stage1_run, stage1_data_config, stage1_seed
    from fedvpa.experiment import make_partition

    key = str(Path(stage1_run).expanduser().resolve())
    with _LOCK:
        if key not in _PARTITIONS:
            run = open_stage1_run(key)
            _PARTITIONS[key] = make_partition(stage1_data_config(run), stage1_seed(run))
        return _PARTITIONS[key]


def choose_clients(partition: Any, count: int, seed: int) -> list[ClientInfo]:
    """``count`` seen clients drawn without replacement (seeded), in id order. Unseen clients
    are left out: stage 1 never trained on them either."""
    seen = [c for c in partition.clients if not c.unseen and (c.context or c.train)]
    if len(seen) < count:
        raise ConfigError(
            f"FedDPO needs {count} seen clients with labelled pairs; the stage-1 partition has "
            f"{len(seen)}",
            field="--feddpo-clients",
        )
    pick = np.random.default_rng(seed).choice(len(seen), size=count, replace=False)
    chosen = sorted((seen[int(i)] for i in pick), key=lambda c: c.client_id)
    return [ClientInfo(c.client_id, c.user_type, len(c.context) + len(c.train)) for c in chosen]


def client_texts(stage1_run: str, client_id: int) -> list[tuple[str, str, str]]:
    """A node's own labelled pairs as ``(prompt, chosen, rejected)`` (context + train, never its
    test pairs)."""
    by_id = {c.client_id: c for c in stage1_partition(stage1_run).clients}
    if client_id not in by_id:
        raise ConfigError(f"no stage-1 client {client_id}", path=stage1_run, field="client-id")
    client = by_id[client_id]
    pairs = [(p.prompt, p.chosen, p.rejected) for p in [*client.context, *client.train]]
    if not pairs:
        raise ConfigError(f"stage-1 client {client_id} has no labelled pair", field="client-id")
    return pairs


# ---------------------------------------------------------------------- one client's round

_POLICIES: dict[str, Any] = {}


def _policy(settings: FedDPOSettings) -> Any:
    """The plain policy, loaded once per process (a Ray actor serves many clients; every
    round wraps it with an adapter and unloads the adapter again)."""
    from fedvpa.alignment.policy import load_policy

    key = settings.policy or "smollm2"
    with _LOCK:
        if key not in _POLICIES:
            _POLICIES[key] = load_policy(settings.policy)
        return _POLICIES[key]


def initial_adapter(settings: FedDPOSettings) -> dict[str, np.ndarray]:
    """The global adapter before round 1: LoRA A random (seeded), B zero (= the base policy)."""
    import torch

    from fedvpa.alignment.dpo import lora_arrays, wrap_lora

    policy = _policy(settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        wrapped = wrap_lora(policy.model)
    try:
        return lora_arrays(wrapped)
    finally:
        policy.model = wrapped.unload()


def local_dpo(
    settings: FedDPOSettings,
    arrays: dict[str, np.ndarray],
    pairs: list[tuple[str, str, str]],
    *,
    server_round: int,
    client_id: int,
    work_dir: Path,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``local_steps`` DPO steps from the global adapter on this client's pairs; returns the new
    adapter and the metrics (``num-examples`` is what FedAvg weighs the client by)."""
    import datasets
    import torch

    from fedvpa.alignment.dpo import build_plain_dpo, load_lora_arrays, lora_arrays
    from fedvpa.alignment.prompts import render_prompt

    datasets.disable_progress_bars()  # per-client dataset bars from every actor drown the log
    torch.set_num_threads(settings.threads)
    policy = _policy(settings)
    rendered = [(render_prompt(policy.tokenizer, p), c, r) for p, c, r in pairs]
    rng = np.random.default_rng([settings.seed, server_round, client_id])
    needed = settings.local_steps * settings.batch_size
    order = rng.permutation(len(rendered))
    # a client with fewer pairs than the round's steps need goes through them again (epochs)
    chosen = [rendered[int(order[i % len(order)])] for i in range(needed)]
    t0 = time.perf_counter()
    trainer = build_plain_dpo(
        policy.model,
        policy.tokenizer,
        chosen,
        work_dir,
        max_steps=settings.local_steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed * 1_000_003 + server_round * 1_009 + client_id,
        max_length=settings.max_length,
    )
    try:
        load_lora_arrays(trainer.model, arrays)  # after the reference pass (adapter off)
        result = trainer.train()
        new = lora_arrays(trainer.model)
    finally:
        policy.model = trainer.model.unload()  # the plain policy again, for the next client
    metrics = {
        "num-examples": float(len(pairs)),
        "train-loss": float(result.training_loss),
        "train-seconds": time.perf_counter() - t0,
    }
    return new, metrics


def save_adapter(settings: FedDPOSettings, arrays: dict[str, np.ndarray], folder: Path) -> None:
    """The averaged adapter as a PEFT folder (``PeftModel.from_pretrained`` reads it)."""
    from fedvpa.alignment.dpo import load_lora_arrays, wrap_lora

    policy = _policy(settings)
    wrapped = wrap_lora(policy.model)
    try:
        load_lora_arrays(wrapped, arrays)
        wrapped.save_pretrained(str(folder))
    finally:
        policy.model = wrapped.unload()


def adapter_bytes(arrays: dict[str, np.ndarray]) -> int:
    """What one client uploads per round (and downloads): the LoRA matrices, float32."""
    return int(sum(a.nbytes for a in arrays.values()))
