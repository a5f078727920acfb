"""Server-side optimisers on the aggregated update (FedOpt: Reddi et al., ICLR 2021).

FedAvg replaces the global weights by the clients' weighted mean. When every client holds a few
pairs of one user type, a round's mean is pulled far towards whichever types were sampled, and
the global model swings from round to round. FedOpt treats ``delta = mean - global`` as a
pseudo-gradient and lets a server optimiser take the step: momentum (FedAvgM) averages the
direction over rounds, Adam / Yogi also normalise each weight's step by its recent magnitude.

The maths is pure numpy on ``dict[str, ndarray]`` so it is exact, order-independent (float64) and
testable against hand-computed steps. The moments live in the server state (checkpointed), so a
resumed run continues the same trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedvpa.methods.base import Arrays

SERVER_OPTIMISERS = ("avg", "avgm", "adam", "yogi")
MOMENT_PREFIX = ("server_m/", "server_v/")


@dataclass(frozen=True)
class ServerStep:
    """One server optimiser's settings (``kind="avg"``, ``lr=1`` is plain FedAvg)."""

    kind: str = "avg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3


def pseudo_gradient(global_arrays: Arrays, averaged: Arrays) -> Arrays:
    """``mean - global`` per float array (the direction FedAvg would move in, at step size 1)."""
    return {
        k: averaged[k].astype(np.float64) - global_arrays[k].astype(np.float64)
        for k in averaged
        if np.issubdtype(averaged[k].dtype, np.floating)
    }


def server_update(
    global_arrays: Arrays,
    averaged: Arrays,
    moments: Arrays,
    step: ServerStep,
    t: int,
) -> tuple[Arrays, Arrays]:
    """New global weights and moments after server step number ``t`` (1-based).

    ``avg``: ``x + lr * delta``. ``avgm``: ``m = beta1 m + delta``, ``x + lr * m``.
    ``adam`` / ``yogi``: bias-corrected first and second moments, ``x + lr * m_hat /
    (sqrt(v_hat) + eps)``; Yogi's second moment moves by ``sign(v - delta^2) delta^2`` so it
    grows as fast as Adam's but shrinks slowly. Non-float arrays are taken from ``averaged``.
    """
    if t < 1:
        raise ValueError(f"server step numbers start at 1, got {t}")
    delta = pseudo_gradient(global_arrays, averaged)
    new_arrays: Arrays = {}
    new_moments: Arrays = {}
    for key, value in averaged.items():
        if key not in delta:
            new_arrays[key] = value
            continue
        d = delta[key]
        x = global_arrays[key].astype(np.float64)
        if step.kind == "avg":
            x = x + step.lr * d
        elif step.kind == "avgm":
            m = step.beta1 * moments.get("server_m/" + key, np.zeros_like(d)) + d
            new_moments["server_m/" + key] = m
            x = x + step.lr * m
        else:
            m = moments.get("server_m/" + key, np.zeros_like(d))
            v = moments.get("server_v/" + key, np.zeros_like(d))
            m = step.beta1 * m + (1 - step.beta1) * d
            sq = d * d
            if step.kind == "adam":
                v = step.beta2 * v + (1 - step.beta2) * sq
            else:
                v = v - (1 - step.beta2) * np.sign(v - sq) * sq
            new_moments["server_m/" + key] = m
            new_moments["server_v/" + key] = v
            m_hat = m / (1 - step.beta1**t)
            v_hat = v / (1 - step.beta2**t)
            x = x + step.lr * m_hat / (np.sqrt(v_hat) + step.eps)
        new_arrays[key] = x.astype(value.dtype)
    return new_arrays, new_moments


def split_moments(extra: Arrays) -> tuple[Arrays, Arrays]:
    """``(moments, rest)`` of a server state's extra arrays."""
    moments = {k: v for k, v in extra.items() if k.startswith(MOMENT_PREFIX)}
    rest = {k: v for k, v in extra.items() if not k.startswith(MOMENT_PREFIX)}
    return moments, rest
