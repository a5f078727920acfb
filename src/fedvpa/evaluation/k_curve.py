"""How accuracy grows with the context a new user reveals: the k-curve of unseen clients.

Each point scores every unseen client's test pairs with ``z`` inferred from only its first ``k``
context pairs, so a curve compares how fast methods personalise a user they never trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.methods.base import Predictor


def truncate_context(client: ClientTensors, k: int) -> ClientTensors:
    """The client with only its first ``k`` context pairs left to infer ``z`` from.

    The train split is emptied too, so whatever a predictor reads as context (``context`` for
    unseen clients, ``context + train`` for seen ones) is exactly those ``k`` pairs; the test
    pairs are kept untouched as the pairs being scored.
    """
    if not 1 <= k <= len(client.context):
        raise ValueError(f"client {client.client_id}: k={k} outside 1..{len(client.context)}")
    index = torch.arange(k)
    return replace(
        client, context=client.context.subset(index), train=client.train.subset(index[:0])
    )


def usable_k(clients: Sequence[ClientTensors], k_values: Sequence[int]) -> list[int]:
    """The k values every unseen client has enough context pairs for (so each point uses k)."""
    unseen = [c for c in clients if c.unseen and len(c.test) > 0]
    if not unseen:
        return []
    most = min(len(c.context) for c in unseen)
    return sorted({int(k) for k in k_values if 1 <= int(k) <= most})


def k_curve(
    predictor: Predictor, clients: Sequence[ClientTensors], k_values: Sequence[int]
) -> dict[str, Any] | None:
    """Unseen-client macro accuracy when only the first k context pairs are revealed."""
    from fedvpa.evaluation.accuracy import evaluate

    ks = usable_k(clients, k_values)
    unseen = [c for c in clients if c.unseen and len(c.test) > 0]
    curve: list[float] = []
    for k in ks:
        report = evaluate(predictor, [truncate_context(c, k) for c in unseen])
        groups = report.get("unseen", {})
        per_type = [
            float(v)
            for key, v in groups.items()
            if key not in ("macro", "n") and v is not None and math.isfinite(float(v))
        ]
        if not per_type:
            return None
        curve.append(sum(per_type) / len(per_type))
    return {"k": ks, "unseen_macro": curve} if ks else None
