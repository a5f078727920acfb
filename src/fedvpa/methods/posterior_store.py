"""The server's store of client posteriors for the latent methods, as pure functions.

The Federated Mixture Prior keeps every client's latest posterior ``(mu, sigma^2, n)`` for
``prior-max-age`` rounds; ``num-prototypes = "auto"`` keeps every client's latest mean; and
population inference sends those rows with the evaluated weights. Rows are aligned arrays keyed
by client id, so the store travels in a ``ServerState`` like any other arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedvpa.methods.base import Arrays
from fedvpa.model.prior_compression import compress_mixture

# Evaluation arrays beside the shared weights under latent-inference = "population": the prior
# rows the clients would receive (means and weights), never trained on.
POPULATION_KEYS = ("population_mu", "population_n")


def without_population(arrays: Arrays) -> Arrays:
    """The shared weights of evaluation arrays (``evaluation_arrays`` may add the population)."""
    return {k: v for k, v in arrays.items() if k not in POPULATION_KEYS}


PRIOR_KEYS = ("prior_mu", "prior_var", "prior_n", "prior_ids")


def latest_per_client(old: Arrays, new: Arrays, keys: Sequence[str]) -> Arrays:
    """Row-aligned arrays ``keys`` (the first holds client ids) with ``new``'s rows written over
    ``old``'s for the same client, sorted by client id. ``old`` may lack the keys (first round).
    """
    id_key = keys[0]
    rows: dict[int, tuple] = {}
    for source in (old, new):
        if id_key not in source:
            continue
        for i, cid in enumerate(source[id_key].tolist()):
            rows[int(cid)] = tuple(source[k][i] for k in keys)
    order = sorted(rows)
    out: Arrays = {}
    for j, key in enumerate(keys):
        values = [rows[c][j] for c in order]
        out[key] = np.stack(values).astype(new[key].dtype) if values else new[key][:0]
    return out


def merge_components(old: Arrays, new: Arrays, oldest_round: int) -> Arrays:
    """The prior store after a round: each client's latest posterior, if reported after
    ``oldest_round``.

    The paper's prior holds only the last round's participants: ten clients, often of two or
    three of the user types, so every other type is pulled towards them for a round and the
    global model swings (FedVPA-GP fell from 66 to 52-54 % on plural-4 in one such round,
    measured). Keeping every client's latest posterior for ``prior_max_age`` rounds makes the
    prior describe the population instead of one sample of it.
    """
    merged = latest_per_client(old, new, ("prior_ids", *PRIOR_KEYS[:3], "prior_round"))
    keep = merged["prior_round"] > oldest_round
    return {k: v[keep] for k, v in merged.items()}


def compress_prior_rows(
    rows: Arrays, max_components: int, var_floor: float, exclude_id: int | None = None
) -> Arrays:
    """The prior components a client receives: the store's rows ``PRIOR_KEYS``, merged into at
    most ``max_components`` (0 = all rows unchanged) by ``compress_mixture`` with weights
    ``n_j``, the weights the client's ``pi`` starts from.

    Variances are floored at ``var_floor`` before merging, as the client floors them, so the
    merged mixture has the moments of the mixture the client would have used. A merged
    component's size is the sum of its members' ``n_j``; its id is ``-(1 + smallest member
    id)`` (a single component keeps its client id), so a client's private ``pi`` for it survives
    while the cluster keeps that member, and never collides with a client id. With
    ``exclude_id`` (``exclude-own-component``) that client's own row is left out before merging,
    since a merged component cannot be excluded on the client.
    """
    sent = {key: rows[key] for key in PRIOR_KEYS}
    if max_components == 0 or sent["prior_n"].size <= max_components:
        return sent
    if exclude_id is not None:
        keep = sent["prior_ids"] != exclude_id
        sent = {key: value[keep] for key, value in sent.items()}
    var = np.maximum(sent["prior_var"], np.float32(var_floor))
    merged = compress_mixture(sent["prior_mu"], var, sent["prior_n"], max_components)
    if merged.num_components == sent["prior_n"].size:
        return sent
    ids = sent["prior_ids"]
    count = np.bincount(merged.assignment, minlength=merged.num_components)
    smallest = np.full(merged.num_components, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, merged.assignment, ids.astype(np.int64))
    return {
        "prior_mu": merged.mu.astype(np.float32),
        "prior_var": merged.var.astype(np.float32),
        "prior_n": merged.weight.astype(np.float32),
        "prior_ids": np.where(count == 1, smallest, -(1 + smallest)).astype(ids.dtype),
    }


def update_store(extra: Arrays, ids: np.ndarray, mus: np.ndarray) -> Arrays:
    """The server's latest posterior mean per client, with ``ids`` / ``mus`` written over it."""
    return latest_per_client(
        extra, {"store_ids": ids, "store_mu": mus.astype(np.float32)}, ("store_ids", "store_mu")
    )
