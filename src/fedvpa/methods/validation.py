"""Model selection on a client-held validation share (``validation-share``).

With a dozen pairs per client, a client memorises its pairs within a round and the shared model
can personalise in the first rounds and then lose it over the next ones (issue 10: 79 % seen at
round 4, monolithic by round 50 on ``plural-2``). A run cannot tell from its training loss when
that happens; a share of every client's pairs that no local step ever trains on can.

Each sampled client scores the model it *receives* on its own validation pairs before training
(negative log-likelihood, summed, and the pair count: two scalars, never the pairs), then trains
on the rest. The server adds the round's scores up and keeps the global weights with the lowest
validation NLL so far; the run evaluates and reports those (early stopping without stopping:
training goes on and a later, better model replaces the kept one). The model after the last
round is never scored, so it is never the one kept.

The split is fixed per client (a permutation seeded by the client id), so a validation pair is
never trained on in any round; at evaluation the client's posterior still reads every labelled
pair, as without the option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedvpa.embeddings.tensors import ClientTensors, PairTensors

if TYPE_CHECKING:  # base.py calls into this module
    from fedvpa.methods.base import Arrays, ClientUpdate, Predictor, ServerState

SELECTED_PREFIX = "selected/"
VAL_NLL = "val_nll_sum"
VAL_PAIRS = "val_pairs"
VAL_CORRECT = "val_correct"
_SPLIT_SEED = 7_919  # any constant: the split must not change with the run's seed or round
_EPS = 1e-6


def validation_size(n: int, share: float) -> int:
    """Pairs held out of ``n``: ``floor(share * n)``, leaving at least 2 to train on."""
    if share <= 0:
        return 0
    return max(0, min(int(share * n), n - 2))


def hold_out(client: ClientTensors, share: float) -> tuple[ClientTensors, PairTensors | None]:
    """``(client without its validation pairs, validation pairs)``; ``None`` when none are held.

    The held-out pairs come from context and train alike (one permutation of the labelled pairs)
    and leave the test pairs alone.
    """
    n_ctx, n_train = len(client.context), len(client.train)
    n_val = validation_size(n_ctx + n_train, share)
    if n_val == 0:
        return client, None
    gen = torch.Generator().manual_seed(_SPLIT_SEED + int(client.client_id))
    order = torch.randperm(n_ctx + n_train, generator=gen)
    val_idx, keep_idx = order[:n_val].sort().values, order[n_val:].sort().values
    keep_ctx = keep_idx[keep_idx < n_ctx]
    keep_train = keep_idx[keep_idx >= n_ctx] - n_ctx
    held = replace(
        client, context=client.context.subset(keep_ctx), train=client.train.subset(keep_train)
    )
    return held, client.labelled.subset(val_idx)


def validation_scores(
    predictor: Predictor, held: ClientTensors, val: PairTensors
) -> dict[str, float]:
    """The summed NLL, correct count and size of ``val`` under ``predictor`` (z from ``held``)."""
    p = predictor.prob_a_preferred(held, val).double().clamp(_EPS, 1 - _EPS)
    y = val.label.double()
    nll = -(y * p.log() + (1 - y) * (1 - p).log()).sum()
    correct = ((p > 0.5).double() == y).sum()
    return {VAL_NLL: float(nll), VAL_CORRECT: float(correct), VAL_PAIRS: float(len(val))}


def round_validation_nll(updates: Sequence[tuple[int, ClientUpdate]]) -> float | None:
    """Mean validation NLL per pair over the round's replies; ``None`` if none was scored."""
    pairs = sum(u.metrics.get(VAL_PAIRS, 0.0) for _, u in updates)
    if pairs <= 0:
        return None
    return sum(u.metrics.get(VAL_NLL, 0.0) for _, u in updates) / pairs


def keep_best(
    before: ServerState, after: ServerState, score: float | None, server_round: int
) -> ServerState:
    """``after`` with ``before``'s global weights kept as the selected model if ``score`` (the
    validation NLL of ``before``'s weights, scored by round ``server_round``'s clients) is the
    lowest so far."""
    if score is None or not np.isfinite(score):
        return after
    info = dict(after.info)
    info["val_nll"] = float(score)
    best = info.get("selected_val_nll")
    if best is not None and score >= best:
        return replace(after, info=info)
    extra = {k: v for k, v in after.extra.items() if not k.startswith(SELECTED_PREFIX)}
    extra.update({SELECTED_PREFIX + k: v.copy() for k, v in before.arrays.items()})
    info["selected_val_nll"] = float(score)
    info["selected_after_round"] = server_round - 1  # the weights the round's clients received
    return replace(after, extra=extra, info=info)


def selection_info(state: ServerState) -> dict[str, float | int]:
    """This round's validation NLL and the round whose weights are kept, for the run log."""
    keys = ("val_nll", "selected_after_round", "selected_val_nll")
    return {k: state.info[k] for k in keys if k in state.info}


def selected_arrays(state: ServerState) -> Arrays | None:
    """The weights :func:`keep_best` kept, or ``None`` before any was kept."""
    n = len(SELECTED_PREFIX)
    chosen = {k[n:]: v for k, v in state.extra.items() if k.startswith(SELECTED_PREFIX)}
    return chosen if chosen and set(chosen) == set(state.arrays) else None
