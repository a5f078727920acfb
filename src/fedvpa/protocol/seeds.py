"""Seeds that depend only on (run seed, round, client, purpose), never on call order.

A resumed run, a run on another machine and the in-process loop then draw the same samples:
sampling, training and aggregation each get their own stream.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

STREAM_SAMPLE = 1
STREAM_TRAIN = 2
STREAM_EVAL = 3
STREAM_AGGREGATE = 4
STREAM_PRIVACY = 5  # DP noise (dp-noise-source = "seed")


def derive_seed(seed: int, server_round: int, client_id: int, stream: int) -> int:
    """A 31-bit seed that depends only on its arguments (not on call order or process)."""
    seq = np.random.SeedSequence([int(seed), int(server_round), int(client_id) + 1, int(stream)])
    return int(seq.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states in JSON form (checkpoints are JSON, never pickle): integers as
    integers, floats as ``float.hex`` strings and torch's byte state as hex, so that
    ``restore_rng_state`` puts back exactly the same states."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": int(version),
            "state": [int(x) for x in internal],
            "gauss_next": None if gauss_next is None else float(gauss_next).hex(),
        },
        "numpy": {
            "bit_generator": str(name),
            "key": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian).hex(),
        },
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
    }


PythonRngState = tuple[int, tuple[int, ...], float | None]
NumpyRngState = tuple[str, np.ndarray, int, int, float]


def rng_state_from_json(
    state: dict[str, Any],
) -> tuple[PythonRngState, NumpyRngState, torch.Tensor]:
    """The native states behind ``capture_rng_state``'s JSON, each tried on a throwaway generator
    first: a checkpoint whose RNG part is malformed is refused when it is read (``ValueError``),
    not after the run has half-restored it."""
    try:
        py, npy = state["python"], state["numpy"]
        gauss = py["gauss_next"]
        python_state: PythonRngState = (
            int(py["version"]),
            tuple(int(x) for x in py["state"]),
            None if gauss is None else float.fromhex(gauss),
        )
        numpy_state: NumpyRngState = (
            str(npy["bit_generator"]),
            np.array([int(x) for x in npy["key"]], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float.fromhex(npy["cached_gaussian"]),
        )
        torch_state = torch.frombuffer(bytearray(bytes.fromhex(state["torch"])), dtype=torch.uint8)
        random.Random().setstate(python_state)
        np.random.RandomState().set_state(numpy_state)
        torch.Generator().set_state(torch_state)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise ValueError(f"malformed RNG state: {type(exc).__name__}: {exc}") from exc
    return python_state, numpy_state, torch_state


def restore_rng_state(state: dict[str, Any]) -> None:
    python_state, numpy_state, torch_state = rng_state_from_json(state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
