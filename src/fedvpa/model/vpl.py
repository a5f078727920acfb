"""The variational preference model: every weight the server shares (and FedAvg averages).

What is *not* here is private to a client: the mixture prior's ``pi`` and the prototype label.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedvpa.errors import ConfigError
from fedvpa.model.config import ModelConfig
from fedvpa.model.encoder import PairFeature, SetEncoder, laplace_posterior
from fedvpa.model.prototypes import OrthogonalPrototypes
from fedvpa.model.selector import LogitBiasSelector, RewardSelector


class VariationalPreferenceModel(nn.Module):
    """Pair feature ``g``, set encoder ``q(z | C)``, z-conditioned selector and prototypes."""

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.feature = PairFeature.from_config(cfg)
            # The Laplace encoder has no weights of its own (it reads the selector's).
            self.encoder = (
                None
                if cfg.encoder == "laplace"
                else SetEncoder(
                    cfg.feature_dim,
                    cfg.latent_dim,
                    kind=cfg.encoder,
                    heads=cfg.attention_heads,
                    dropout=cfg.dropout,
                    logvar_min=cfg.logvar_min,
                    logvar_max=cfg.logvar_max,
                    mu_bias=not cfg.odd_encoder,
                )
            )
            if cfg.selector == "reward":
                self.selector: nn.Module = RewardSelector(
                    cfg.feature_dim, cfg.latent_dim, cfg.selector_hidden, cfg.dropout
                )
            else:
                self.selector = LogitBiasSelector(cfg.feature_dim, cfg.latent_dim)
                if cfg.coupling_init_scale != 1.0:
                    with torch.no_grad():
                        self.selector.bias.weight.mul_(cfg.coupling_init_scale)
        self.prototypes = OrthogonalPrototypes(
            cfg.prototype_rows, cfg.latent_dim, cfg.prototype_radius, seed
        )

    def posterior(
        self,
        ctx_chosen: torch.Tensor,
        ctx_rejected: torch.Tensor,
        mask: torch.Tensor,
        validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar) [B, d]`` of ``q(z | C)`` from oriented context pairs ``[B, K, D]``
        (``validate``: see ``SetEncoder.forward``)."""
        return self.encode(self.feature.pair(ctx_chosen, ctx_rejected), mask, validate)

    def encode(
        self,
        oriented: torch.Tensor,
        mask: torch.Tensor,
        validate: bool = True,
        fused: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar) [B, d]`` from context pair *features* ``g(chosen) - g(rejected)``
        ``[B, K, F]``: ``posterior`` after the pair feature, for a caller that computed the
        features of a client's pairs once instead of once per view.

        ``fused``: the odd encoder reads the choices and their reversal in one encoder call
        (``[2B, K, F]``) instead of two. The same function, other floating-point rounding
        (a batched matrix product sums in another order), so only the batched local step, which
        already rounds differently from one-client training, uses it; for the same reason the
        encoder then computes its attention on flat rows (``SetEncoder._flat_attention``)."""
        if self.cfg.encoder == "laplace":
            if validate and not bool(mask.bool().any(dim=1).all()):
                raise ValueError("every context set needs at least one valid pair")
            return laplace_posterior(
                oriented,
                mask,
                self.selector.base.weight[0],
                self.selector.bias.weight,
                prior_var=self.cfg.laplace_prior_var,
                steps=self.cfg.laplace_steps,
                logvar_min=self.cfg.logvar_min,
                logvar_max=self.cfg.logvar_max,
            )
        if self.cfg.odd_encoder:
            # z(reversed choices) = -z(choices): no constant z can fit a client, so a client of
            # one user type moves the encoder only through what its choices say (see config).
            if fused:
                both = torch.cat([oriented, -oriented], dim=0)
                mu_both, logvar_both = self.encoder(
                    both, torch.cat([mask, mask]), validate, flat_attention=True
                )
                mu_fwd, mu_rev = mu_both.chunk(2)
                logvar_fwd, logvar_rev = logvar_both.chunk(2)
            else:
                mu_fwd, logvar_fwd = self.encoder(oriented, mask, validate)
                mu_rev, logvar_rev = self.encoder(-oriented, mask, validate)
            return 0.5 * (mu_fwd - mu_rev), 0.5 * (logvar_fwd + logvar_rev)
        return self.encoder(oriented, mask, validate, flat_attention=fused)

    def logit(self, emb_a: torch.Tensor, emb_b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``logit P(A preferred | z)``; ``z [..., d]`` broadcasts against ``emb_a [..., D]``."""
        return self.selector(self.feature(emb_a), self.feature(emb_b), z)

    def logit_grid(
        self, emb_a: torch.Tensor, emb_b: torch.Tensor, points: torch.Tensor
    ) -> torch.Tensor:
        """``logit`` of pairs ``emb [n, D]`` at each of ``points [J, d]``, ``[J, n]``: the
        selector's one-product form where it has one (logit-bias), else broadcast."""
        g_a, g_b = self.feature(emb_a), self.feature(emb_b)
        grid = getattr(self.selector, "grid", None)
        if grid is not None:
            return grid(g_a, g_b, points)
        return self.selector(g_a, g_b, points.unsqueeze(1))

    def logit_from_features(
        self, g_a: torch.Tensor, g_b: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``logit`` from the pair feature's outputs ``g(h_A)``, ``g(h_B)`` (see ``encode``)."""
        return self.selector(g_a, g_b, z)

    def shared_state(self) -> dict[str, np.ndarray]:
        """Every shared parameter and buffer as float32 numpy copies, keyed by state-dict name."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def load_shared_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Load arrays made by ``shared_state`` (of a model with the same config)."""
        own = self.state_dict()
        missing = sorted(set(own) - set(arrays))
        extra = sorted(set(arrays) - set(own))
        if missing or extra:
            name = (missing or extra)[0]
            raise ConfigError(
                f"shared state does not match the model: {len(missing)} missing, "
                f"{len(extra)} unexpected arrays",
                field=name,
            )
        new = {}
        for key, ref in own.items():
            value = torch.as_tensor(np.asarray(arrays[key]))
            if tuple(value.shape) != tuple(ref.shape):
                raise ConfigError(
                    f"shape {tuple(value.shape)} != expected {tuple(ref.shape)}", field=key
                )
            new[key] = value.to(ref.dtype)
        self.load_state_dict(new)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
