"""The paper's z-conditioning of the policy: ``W z`` (a learned ``Linear(d -> hidden)``) added to
the input embeddings at every position.

A forward hook on the input-embedding module rather than a wrapper model: ``generate()``,
PEFT's ``get_peft_model`` and TRL's trainers all see the unchanged model class, and the hook
also fires for the one-token steps of cached generation, so every generated position is
conditioned too. ``z`` is state set before a call (``with injector.conditioned(z):``) because
none of those APIs forward extra keyword arguments to the embedding layer.

The projection starts at zero, so an untrained injector leaves the policy exactly as it was:
``z`` only has an effect once stage-2 training (``fedvpa align``) has learned ``W``.

``z`` is divided by ``z_scale`` before the projection: ``fedvpa align`` sets it to the
root-mean-square coordinate of the groups' ``z`` it trains with and saves it with ``W``. The
offset ``W z`` is added to token embeddings whose size is the policy's, not the latent space's,
and the scale of stage 1's latent space is arbitrary (population placements lie about 1.4 times
as far out as encoder means): unscaled, a larger ``z`` made the same DPO recipe push one
group's policy into incoherent text (README, "Which ``z`` a group gets").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedvpa.errors import ConfigError

WEIGHTS_FILE = "z_projection.pt"
META_FILE = "z_projection.json"


class ZInjector(nn.Module):
    """``Linear(latent_dim -> hidden_size, bias=False)``, zero-initialised, hooked into a model's
    input embeddings by :meth:`attach`."""

    def __init__(self, latent_dim: int, hidden_size: int, z_scale: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(z_scale) and z_scale > 0):
            raise ConfigError(f"must be a positive number, got {z_scale!r}", field="z_scale")
        self.latent_dim = int(latent_dim)
        self.hidden_size = int(hidden_size)
        self.z_scale = float(z_scale)
        self.proj = nn.Linear(self.latent_dim, self.hidden_size, bias=False)
        nn.init.zeros_(self.proj.weight)
        self._z: torch.Tensor | None = None
        self._handle: Any = None

    # ------------------------------------------------------------------ z state

    def set_z(self, z: torch.Tensor | None) -> None:
        """``z [d]`` (one preference for the whole batch) or ``[B, d]`` (one per row);
        ``None`` = no conditioning (the base policy)."""
        if z is not None:
            z = torch.as_tensor(z, dtype=torch.float32)
            if z.shape[-1] != self.latent_dim or z.dim() not in (1, 2):
                raise ConfigError(
                    f"z has shape {tuple(z.shape)}, the projection expects [{self.latent_dim}] "
                    f"or [B, {self.latent_dim}]",
                    field="z",
                )
        self._z = z

    @contextmanager
    def conditioned(self, z: torch.Tensor | None) -> Iterator[None]:
        previous = self._z
        self.set_z(z)
        try:
            yield
        finally:
            self._z = previous

    def offset(self, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """``W z`` as ``[B, 1, hidden]`` for an embedding output of ``batch`` rows.

        ``generate`` may expand a batch (``num_return_sequences``, beams): a ``z`` of ``B`` rows
        is repeated row-wise to match, as ``generate`` repeats its inputs.
        """
        if self._z is None:
            return None
        z = self._z.to(device=device, dtype=self.proj.weight.dtype)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.shape[0] != batch:
            if batch % z.shape[0]:
                raise ValueError(f"z has {z.shape[0]} rows, the batch {batch}")
            z = z.repeat_interleave(batch // z.shape[0], dim=0)
        return self.proj(z / self.z_scale).to(dtype).unsqueeze(1)

    # ------------------------------------------------------------------ hook

    def attach(self, model: nn.Module) -> ZInjector:
        """Hook into ``model.get_input_embeddings()`` (once) and move to its device."""
        self.detach()
        embeddings = model.get_input_embeddings()
        weight = next(embeddings.parameters())
        self.to(device=weight.device)
        self._handle = embeddings.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        add = self.offset(output.shape[0], output.dtype, output.device)
        return None if add is None else output + add

    # ------------------------------------------------------------------ files

    @property
    def is_zero(self) -> bool:
        """True while ``W`` is untrained (zero): then ``z`` cannot change the policy."""
        return bool((self.proj.weight == 0).all())

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": self.proj.weight.detach().cpu()}, folder / WEIGHTS_FILE)
        (folder / META_FILE).write_text(
            json.dumps(
                {
                    "latent_dim": self.latent_dim,
                    "hidden_size": self.hidden_size,
                    "z_scale": self.z_scale,
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, folder: Path) -> ZInjector:
        """A saved projection; a folder without one or of another size is a one-line error."""
        meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            raise ConfigError(
                f"no z projection ({META_FILE}, {WEIGHTS_FILE})",
                path=str(folder),
                field="--adapter",
            )
        try:
            meta = json.loads(meta_path.read_text())
            # adapters saved before z_scale existed were trained on z as it was
            injector = cls(
                int(meta["latent_dim"]), int(meta["hidden_size"]), float(meta.get("z_scale", 1.0))
            )
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=str(meta_path), field=exc.field) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"malformed z projection metadata ({type(exc).__name__}: {exc})",
                path=str(meta_path),
            ) from None
        weight = torch.load(weights_path, map_location="cpu", weights_only=True)["weight"]
        if tuple(weight.shape) != tuple(injector.proj.weight.shape):
            raise ConfigError(
                f"z projection of shape {tuple(weight.shape)}, expected "
                f"{tuple(injector.proj.weight.shape)}",
                path=str(weights_path),
            )
        with torch.no_grad():
            injector.proj.weight.copy_(weight)
        return injector


def z_scale_of(zs: torch.Tensor) -> float:
    """The root-mean-square coordinate of the ``[n, d]`` ``z`` a projection is trained with
    (1 where they are all zero): dividing by it gives the projection inputs of unit size
    whatever the scale of stage 1's latent space."""
    rms = float(torch.as_tensor(zs, dtype=torch.float64).pow(2).mean().sqrt())
    return rms if rms > 0 and math.isfinite(rms) else 1.0
