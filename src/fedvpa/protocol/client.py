"""What a client does with the server's messages, whatever carries them (Flower's ClientApp or
the in-process loop): train, evaluate, and keep its private state between rounds.

Client private state (Flower's ``Context.state``) dies with a simulation process. When a
client-state folder is configured, each client also writes its private state after every local
training to ``<dir>/client_<id>/round_<r>.npz``; a client training in round ``r`` reads the
newest file from a round before ``r``. A crash in the middle of round ``r`` can leave round-``r``
files behind, but the resumed round ``r`` never reads them (it overwrites them), so resume is
exact.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.evaluation.accuracy import evaluate_client
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod
from fedvpa.protocol import seeds
from fedvpa.protocol.round import EvalReply
from fedvpa.protocol.run_folder import atomic_write_bytes


def train_step(
    method: FederatedMethod,
    global_arrays: Arrays,
    payload: Arrays,
    client: ClientTensors,
    state: Arrays,
    server_round: int,
    seed: int,
) -> tuple[ClientUpdate, Arrays]:
    """One round's local training: reseeded from the round's seed, so any runtime draws alike."""
    seeds.seed_everything(seed)
    return method.train_on_client(global_arrays, payload, client, state, server_round, seed)


def evaluate_step(
    method: FederatedMethod,
    global_arrays: Arrays,
    client: ClientTensors,
    state: Arrays,
    seed: int,
) -> EvalReply:
    """Counts on the client's own test pairs, and its evaluation posterior for a latent method
    (2d floats, the size of what training sends: the server measures collapse from them)."""
    seeds.seed_everything(seed)
    predictor = method.predictor(global_arrays, state or None)
    counts = {
        str(k): float(v)
        for k, v in dict(evaluate_client(predictor, client)).items()
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    }
    return EvalReply(counts, method.latent_stats(global_arrays, client))


# ---------------------------------------------------------------- private state files

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
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    target = _client_dir(state_dir, client_id) / f"round_{int(server_round)}.npz"
    atomic_write_bytes(target, buffer.getvalue())
    older = [(r, p) for r, p in _state_files(state_dir, client_id) if r < server_round]
    for _, path in older[:-1]:
        path.unlink(missing_ok=True)
