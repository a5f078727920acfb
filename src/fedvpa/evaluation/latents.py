"""Collapse diagnostics of the clients' evaluation posteriors, for the run log."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedvpa.model.diagnostics import active_units, kl_per_dimension, latent_silhouette


def latent_report(latents: Sequence[tuple[Any, dict[str, np.ndarray]]]) -> dict[str, float | None]:
    """KL, active units and type silhouette of ``(client info, {"mu", "logvar"})`` pairs.

    Seen clients only when there are any. KL is to ``N(0, I)`` for every method, so it is
    comparable across priors; active units count latent dimensions whose posterior mean varies
    across clients. ``info`` needs ``unseen`` and ``type_index``.
    """
    seen = [(info, lat) for info, lat in latents if not info.unseen] or list(latents)
    mu = torch.as_tensor(np.stack([lat["mu"] for _, lat in seen]), dtype=torch.float32)
    out: dict[str, float | None] = {"eval/active_units": float(active_units(mu))}
    if all("logvar" in lat for _, lat in seen):
        logvar = torch.as_tensor(np.stack([lat["logvar"] for _, lat in seen]), dtype=torch.float32)
        out["eval/kl"] = float(kl_per_dimension(mu, logvar).sum())
    silhouette = latent_silhouette(mu, [info.type_index for info, _ in seen])
    out["eval/silhouette"] = silhouette if math.isfinite(silhouette) else None
    return out
