"""The two Gaussian mechanisms of client-level DP, as pure functions of numpy arrays.

*Weight updates* are clipped per client (all shared arrays together, L2 norm ``C``) and noised
so that their mean carries Gaussian noise of standard deviation ``z * C / m`` (``m`` clients
averaged), the DP-FedAvg recipe of Flower's ``DifferentialPrivacyServerSideFixedClipping``.
The noise is added to each clipped update before the method averages them, with standard
deviation ``z * C / sqrt(m)``: for a mean with equal weights that is the same distribution as
noise on the mean, and it works for methods that average different arrays over different client
groups (FedBiscuit's heads), each array's noise scaled by its own group size.

*Statistics* a client reveals one by one (a posterior ``(mu, sigma^2)``, per-head losses, a
locate reply) cannot hide in a mean: each release is clipped (all its arrays together, norm
``C_s``) and noised with standard deviation ``z * C_s``. Positive statistics (variances) are
clipped and noised in log space, so clipping shrinks them towards 1 and ``(mu, sigma^2)``
towards the standard normal, the prior's own fallback.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm

Arrays = dict[str, np.ndarray]


def _check_float(name: str, value: np.ndarray) -> None:
    if not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"array {name!r} is {value.dtype}: only float arrays can be privatised")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"array {name!r} holds a NaN or inf: it cannot be clipped")


def update_norm(update: Arrays, reference: Arrays) -> float:
    """L2 norm of ``update - reference`` over all of ``update``'s arrays together."""
    return get_norm([update[k].astype(np.float64) - reference[k] for k in sorted(update)])


def clip_update(update: Arrays, reference: Arrays, clip_norm: float) -> Arrays:
    """``reference + clip(update - reference)``: the client's change of the weights it was
    sent, scaled down (never up) to L2 norm ``clip_norm`` over all its arrays together."""
    keys = sorted(update)
    for key in keys:
        if key not in reference:
            raise ValueError(f"update holds array {key!r} that the server did not send")
        _check_float(key, update[key])
    deltas = [update[k].astype(np.float64) - reference[k].astype(np.float64) for k in keys]
    if get_norm(deltas) > 0:
        clip_inputs_inplace(deltas, clip_norm)
    return {
        k: (reference[k].astype(np.float64) + d).astype(update[k].dtype)
        for k, d in zip(keys, deltas, strict=True)
    }


def noise_updates(
    updates: Sequence[Arrays],
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator,
) -> list[Arrays]:
    """Each (clipped) update plus noise of std ``z * C / sqrt(m_k)`` on array ``k``, where
    ``m_k`` is the number of updates holding ``k``: the mean of those ``m_k`` arrays then carries
    noise of std ``z * C / m_k``, the sum's ``z * C`` spread over its terms."""
    counts: dict[str, int] = {}
    for update in updates:
        for key in update:
            counts[key] = counts.get(key, 0) + 1
    out = []
    for update in updates:
        noisy = {}
        for key in sorted(update):
            std = noise_multiplier * clip_norm / np.sqrt(counts[key])
            value = update[key].astype(np.float64) + rng.normal(0.0, std, update[key].shape)
            noisy[key] = value.astype(update[key].dtype)
        out.append(noisy)
    return out


LOG_BOUND = 30.0  # exp(30) ~ 1e13: far beyond any posterior variance, finite in float32


def privatise_stats(
    stats: Mapping[str, np.ndarray],
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator,
    log_scale: Collection[str] = (),
) -> Arrays:
    """One client's statistics release through the Gaussian mechanism: arrays in ``log_scale``
    go to log space, all arrays are clipped together to L2 norm ``clip_norm``, each coordinate
    gets noise of std ``noise_multiplier * clip_norm``, and log-space arrays come back with exp.

    At a small epsilon the noise std reaches tens, and ``exp`` of such a value overflows float32
    to ``inf``; the noisy log is therefore clamped to ``[-LOG_BOUND, LOG_BOUND]`` first, which is
    post-processing and costs no privacy."""
    keys = sorted(stats)
    values = []
    for key in keys:
        value = np.asarray(stats[key], dtype=np.float64)
        _check_float(key, np.asarray(stats[key]))
        if key in log_scale:
            if np.any(value <= 0):
                raise ValueError(
                    f"statistic {key!r} must be positive to be privatised in log space"
                )
            value = np.log(value)
        values.append(value.copy())
    if values and get_norm(values) > 0:
        clip_inputs_inplace(values, clip_norm)
    out: Arrays = {}
    for key, value in zip(keys, values, strict=True):
        noisy = value + rng.normal(0.0, noise_multiplier * clip_norm, value.shape)
        if key in log_scale:
            noisy = np.exp(np.clip(noisy, -LOG_BOUND, LOG_BOUND))
        out[key] = noisy.astype(np.asarray(stats[key]).dtype)
    return out


def release_sensitivity_ratio(noise_multiplier: float) -> float:
    """The accountant's noise multiplier (noise std over L2 sensitivity) of either mechanism.

    Neighbouring federations differ in one client's data, the client count being public
    (replace-one): a client's clipped contribution can move from one point of the ball of
    radius ``C`` to another, so the sensitivity is ``2 C`` (``2 C / m`` for a mean of ``m``),
    and noise of std ``z C`` (``z C / m``) gives the ratio ``z / 2``.
    """
    return noise_multiplier / 2.0
