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
