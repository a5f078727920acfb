"""Run-folder persistence: checkpoints, per-client private state, seeds.

Exact resume rests on one rule: every random draw in a round is a function of
``(seed, round, client id, purpose)`` (see ``derive_seed``), never of process history. Client
sampling, each client's local steps, evaluation and the server's aggregation all reseed from it,
so a resumed run replays the same draws as an uninterrupted one. The global RNG states are still
checkpointed (and restored) so that code outside our control that reads them between rounds sees
what it would have seen.

Client private state (``Context.state``) dies with a simulation process. When a client-state
folder is configured, each client also writes its private state after every local training to
``<dir>/client_<id>/round_<r>.npz``; a client training in round ``r`` reads the newest file from
a round before ``r``. A crash in the middle of round ``r`` can leave round-``r`` files behind, but
the resumed round ``r`` never reads them (it overwrites them), so resume is exact.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvpa.methods.base import Arrays, ServerState

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "latest.pkl"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CHECKPOINT_VERSION = 1

# Purposes of derived seeds: distinct streams so that, e.g., sampling and training never share.
STREAM_SAMPLE = 1
STREAM_TRAIN = 2
STREAM_EVAL = 3
STREAM_AGGREGATE = 4


def derive_seed(seed: int, server_round: int, client_id: int, stream: int) -> int:
    """A 31-bit seed that depends only on its arguments (not on call order or process)."""
    seq = np.random.SeedSequence([int(seed), int(server_round), int(client_id) + 1, int(stream)])
    return int(seq.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class Checkpoint:
    """Everything needed to continue after ``server_round``."""

    server_round: int
    state: ServerState
    metrics: list[dict[str, Any]]
    rng: dict[str, Any]
    sampler_state: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename: a reader (or a resumed run) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    payload = {
        "version": checkpoint.version,
        "server_round": checkpoint.server_round,
        "arrays": checkpoint.state.arrays,
        "extra": checkpoint.state.extra,
        "info": checkpoint.state.info,
        "metrics": checkpoint.metrics,
        "rng": checkpoint.rng,
        "sampler_state": checkpoint.sampler_state,
        "config": checkpoint.config,
    }
    atomic_write_bytes(checkpoint_path(run_dir), pickle.dumps(payload, protocol=5))


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    path = checkpoint_path(run_dir)
    if not path.exists():
        return None
    # The file is our own (written by save_checkpoint in a folder the user chose).
    payload = pickle.loads(path.read_bytes())
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} not supported")
    return Checkpoint(
        server_round=int(payload["server_round"]),
        state=ServerState(arrays=payload["arrays"], extra=payload["extra"], info=payload["info"]),
        metrics=list(payload["metrics"]),
        rng=payload["rng"],
        sampler_state=payload["sampler_state"],
        config=payload["config"],
    )


def rewrite_metrics(run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    """metrics.jsonl as of the checkpoint: drops rows a crashed run wrote past it."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    atomic_write_text(run_dir / METRICS_FILE, text)


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


# ---------------------------------------------------------------- client private state files

_ROUND_FILE = re.compile(r"^round_(\d+)\.npz$")


def _client_dir(state_dir: Path, client_id: int) -> Path:
    return state_dir / f"client_{int(client_id)}"


def _state_files(state_dir: Path, client_id: int) -> list[tuple[int, Path]]:
    folder = _client_dir(state_dir, client_id)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _ROUND_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_client_state(state_dir: Path, client_id: int, max_round: int) -> tuple[int, Arrays] | None:
    """The newest private state written in a round ``<= max_round``: (round, arrays)."""
    candidates = [(r, p) for r, p in _state_files(state_dir, client_id) if r <= max_round]
    if not candidates:
        return None
    server_round, path = candidates[-1]
    with np.load(path, allow_pickle=False) as data:
        return server_round, {key: np.array(data[key]) for key in data.files}


def save_client_state(state_dir: Path, client_id: int, server_round: int, arrays: Arrays) -> None:
    """Write round ``server_round``'s state; keep it and the newest earlier one only.

    The earlier file is kept because a crash before the server checkpoints this round means the
    resumed round reads it again.
    """
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    target = _client_dir(state_dir, client_id) / f"round_{int(server_round)}.npz"
    atomic_write_bytes(target, buffer.getvalue())
    older = [(r, p) for r, p in _state_files(state_dir, client_id) if r < server_round]
    for _, path in older[:-1]:
        path.unlink(missing_ok=True)
