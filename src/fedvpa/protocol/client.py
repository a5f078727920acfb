"""What a client does with the server's messages, whatever carries them (Flower's ClientApp or
the in-process loop): train, evaluate, and keep its private state between rounds.

Client private state (Flower's ``Context.state``) dies with a simulation process. When a
client-state folder is configured, each client also writes its private state after every local
training to ``<dir>/client_<id>/round_<r>.npz``; a client training in round ``r`` reads the
newest file from a round before ``r``. A crash in the middle of round ``r`` can leave round-``r``
files behind, but the resumed round ``r`` never reads them (it overwrites them), so resume is
exact. Each file carries the SHA-256 of its arrays (``run_folder.seal_arrays``): a damaged one is
skipped with a warning for the newest intact earlier one, which the saving rule keeps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.evaluation.accuracy import evaluate_client
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, TrainRequest
from fedvpa.protocol import seeds
from fedvpa.protocol.round import EvalReply
from fedvpa.protocol.run_folder import (
    DamagedFileError,
    atomic_write_bytes,
    seal_arrays,
    unseal_arrays,
)

log = logging.getLogger(__name__)


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


def train_steps(
    method: FederatedMethod,
    global_arrays: Arrays,
    requests: Sequence[TrainRequest],
    server_round: int,
) -> list[tuple[ClientUpdate, Arrays] | Exception]:
    """``train_step`` for every client of one message, in order; a failing client fails alone.
    A method that trains such clients together (``train_batch``: FedVPL and FedVPA-GP with
    ``batched-clients``) gets them in one call, and falls back to one at a time if that call
    fails."""
    if len(requests) > 1:
        try:
            together = method.train_batch(global_arrays, requests, server_round)
        except Exception as exc:  # noqa: BLE001 - each client is then tried alone
            log.warning("batched training failed (%s); training the clients one at a time", exc)
            together = None
        if together is not None:
            return together
    results: list[tuple[ClientUpdate, Arrays] | Exception] = []
    for req in requests:
        try:
            results.append(
                train_step(
                    method,
                    global_arrays,
                    req.payload,
                    req.client,
                    req.state,
                    server_round,
                    req.seed,
                )  # fmt: skip
            )
        except Exception as exc:  # noqa: BLE001 - reported per client by the caller
            results.append(exc)
    return results


# What the server already holds in its client records: a reply need not repeat it.
_SERVER_KNOWS = frozenset({"type_index", "unseen"})


def evaluate_step(
    method: FederatedMethod,
    global_arrays: Arrays,
    client: ClientTensors,
    state: Arrays,
    seed: int,
) -> EvalReply:
    """Counts on the client's own test pairs, and its evaluation posterior for a latent method
    (2d floats, the size of what training sends: the server measures collapse from them; under
    population inference d more, the ``z`` read, which stage 2's group ``z`` averages)."""
    seeds.seed_everything(seed)
    predictor = method.predictor(global_arrays, state or None)
    counts = {
        str(k): float(v)
        for k, v in dict(evaluate_client(predictor, client)).items()
        if isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool)
        and k not in _SERVER_KNOWS
    }
    return EvalReply(counts, method.latent_stats(global_arrays, client, predictor))


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


def _read_state(path: Path) -> Arrays:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedFileError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    return unseal_arrays(data, path)


def load_client_state(state_dir: Path, client_id: int, max_round: int) -> tuple[int, Arrays] | None:
    """The newest intact private state written in a round ``<= max_round``: (round, arrays).

    A damaged file is skipped (with a warning) for an earlier intact one: the client then trains
    from an older state, which beats losing the run; ``None`` when no intact file is left.
    """
    candidates = [(r, p) for r, p in _state_files(state_dir, client_id) if r <= max_round]
    for server_round, path in reversed(candidates):
        try:
            return server_round, _read_state(path)
        except DamagedFileError as exc:
            log.warning("client %d: skipped a damaged state file (%s)", int(client_id), exc)
    return None


def save_client_state(state_dir: Path, client_id: int, server_round: int, arrays: Arrays) -> None:
    """Write round ``server_round``'s state; keep it and the newest intact earlier one only.

    The earlier file is kept because a crash before the server checkpoints this round means the
    resumed round reads it again; it must be an intact one, or a damaged file would leave the
    resumed round nothing to fall back to.
    """
    target = _client_dir(state_dir, client_id) / f"round_{int(server_round)}.npz"
    atomic_write_bytes(target, seal_arrays(arrays))
    older = [(r, p) for r, p in _state_files(state_dir, client_id) if r < server_round]
    keep = None
    for _, path in reversed(older):
        try:
            _read_state(path)
        except DamagedFileError:
            continue
        keep = path
        break
    for _, path in older:
        if path != keep:
            path.unlink(missing_ok=True)
