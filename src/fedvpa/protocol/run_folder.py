"""The run folder, owned in one place: ``config.json``, ``metrics.jsonl``, the checkpoint,
``final.json``, and the resume rules.

Exact resume rests on one rule: every random draw in a round is a function of
``(seed, round, client id, purpose)`` (``protocol/seeds.py``), never of process history. Client
sampling, each client's local steps, evaluation and the server's aggregation all reseed from it,
so a resumed run replays the same draws as an uninterrupted one. The global RNG states are still
checkpointed (and restored) so that code outside our control that reads them between rounds sees
what it would have seen.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvpa.errors import ConfigError
from fedvpa.methods.base import ServerState
from fedvpa.protocol import seeds

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "latest.pkl"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CHECKPOINT_VERSION = 1


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


def finite_or_none(value: Any) -> float | None:
    """A finite Python float, or None for None / NaN / inf / anything not a number.

    Run files must be strict JSON (no NaN), and the reports read null as "not measured", which is
    what a NaN from an empty group means.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RunFolder:
    """One run's folder: starts it (or resumes it, under the same identity only), records each
    round (checkpoint, then the metrics row) and finishes it. ``identity`` is what a resumed run
    must share with the run it continues (``FederationConfig.identity``)."""

    def __init__(self, path: str | Path, identity: Mapping[str, Any], num_rounds: int) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.num_rounds = int(num_rounds)

    def check(self, resume: bool) -> Checkpoint | None:
        """The checkpoint to continue from (``None``: start fresh), refusing what cannot be
        continued, before any process starts or any file is written."""
        found = load_checkpoint(self.path)
        if not resume:
            if found is not None:
                raise ConfigError(
                    "run folder already holds a checkpoint: resume it or choose another folder",
                    path=str(self.path),
                )
            return None
        if found is None:
            return None
        diff = sorted(k for k, v in self.identity.items() if found.config.get(k) != v)
        if diff:
            raise ConfigError(
                f"resume: configuration differs from the checkpointed run in {diff}",
                path=str(checkpoint_path(self.path)),
            )
        if found.server_round >= self.num_rounds:
            raise ConfigError(
                f"checkpoint is at round {found.server_round}: nothing to do for "
                f"{self.num_rounds} rounds",
                path=str(self.path),
                field="num-server-rounds",
            )
        return found

    def begin(self, resume: bool, record: Mapping[str, Any]) -> Checkpoint | None:
        """Check, then write ``config.json`` (``record``) and the metrics as of the checkpoint;
        return the checkpoint to continue from (its RNG states restored)."""
        found = self.check(resume)
        self.path.mkdir(parents=True, exist_ok=True)
        rewrite_metrics(self.path, found.metrics if found else [])
        write_json(self.path / CONFIG_FILE, dict(record))
        if found is not None:
            seeds.restore_rng_state(found.rng)
        return found

    def record(self, server_round: int, state: ServerState, history: list[dict[str, Any]]) -> None:
        """Checkpoint after ``server_round`` (whose row is ``history[-1]``), then log the row: a
        crash between the two loses nothing (``begin`` rewrites the log from the checkpoint)."""
        save_checkpoint(
            self.path,
            Checkpoint(
                server_round=server_round,
                state=state,
                metrics=history,
                rng=seeds.capture_rng_state(),
                config=self.identity,
            ),
        )
        append_metrics(self.path, history[-1])

    def finish(self, final: Mapping[str, Any]) -> None:
        write_json(self.path / FINAL_FILE, dict(final))
