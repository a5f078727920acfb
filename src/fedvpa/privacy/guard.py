"""Client-level DP as the round protocol applies it: between the replies and the method.

The server is trusted to add the noise (central DP, as with Flower's server-side clipping
wrappers); what the guarantee covers is everything the server lets out of a round: the global
weights, the mixture prior and prototype labels sent to other clients, and the run log. Per
round it

* clips each client's change of the shared weights (all arrays together, ``dp-clip-norm``),
  gives every client the same aggregation weight (``num_examples`` would leak), and noises each
  update so that the method's mean carries the DP-FedAvg noise (``privacy/mechanism.py``);
* clips and noises every statistics release (posterior after training, locate reply, FedBiscuit's
  losses) on its own (``dp-stats-clip-norm``), as it is used client by client;
* withholds the clients' training metrics from the run log (they are per-client averages of
  private data) and charges the round to the accountant.

Evaluation is not covered: clients score the model on their own test pairs and the counts (and,
for latent methods, evaluation posteriors) reach the report. They are the experimenter's
measurement; a deployment that must cover them keeps evaluation off the private clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fedvpa.config import FederationSettings
from fedvpa.errors import ConfigError
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod
from fedvpa.privacy.accounting import Accountant, noise_for_epsilon
from fedvpa.privacy.mechanism import clip_update, noise_updates, privatise_stats, update_norm
from fedvpa.protocol import seeds

# Offsets inside the privacy stream: the update noise, and one stream per release kind.
_UPDATES, _STATS, _LOCATE = 0, 1, 2


def check_method(method: FederatedMethod, settings: FederationSettings) -> None:
    """Refuse, before anything runs, a DP run that could not protect every exchange."""
    if not method.dp_supported:
        raise ConfigError(
            f"method {settings.method!r} does not declare how its exchanges are privatised "
            "(dp_supported): it cannot run under DP",
            field="dp-noise-multiplier",
        )
    if method.validation_share > 0:
        raise ConfigError(
            "validation-share selects the model on clients' raw validation scores, which DP "
            "cannot cover: set it to 0 under DP",
            field="validation-share",
        )


def census_note(method: FederatedMethod) -> str | None:
    """A note for a DP run of a method that would take a census, or ``None``. The census asks
    every seen client once, unsampled: under the run's noise multiplier that one release would
    cost more epsilon than many sampled rounds, so the round protocol skips it under DP and the
    method decides from what it already holds (FedVPA-GP: its store of noised posterior means).
    """
    if not method.takes_census:
        return None
    return (
        f"note: under DP {method.name} chooses its number of groups from its store of noised "
        "posterior means, without the group census (an unsampled release of every client)"
    )


def encoder_advice(method: FederatedMethod) -> str | None:
    """A hint for a DP run of a latent method with a trained set encoder, or ``None``: its
    encoder weights take most of the noise, and at 100 clients such runs stayed below the
    parameter-free Laplace encoder (FedVPL, reading ``z`` under its prior) or at chance
    (FedVPA-GP) (README, "Privacy")."""
    from fedvpa.methods.variational import VariationalMethod

    if not isinstance(method, VariationalMethod) or method.cfg.encoder == "laplace":
        return None
    return (
        f"note: under DP the {method.cfg.encoder} encoder of {method.name} takes most of the "
        "noise (FedVPL: 61 % seen against the Laplace encoder's 66 % at epsilon 8 and 100 "
        "clients, FedVPA-GP near chance, in our measurements); for a personalised model "
        "under DP try --set encoder=laplace (conf/dp-fedvpl.toml)"
    )


class ClientLevelDP:
    """The guard of one run: its noise multiplier, its accountant, its noise streams."""

    def __init__(
        self, method: FederatedMethod, settings: FederationSettings, num_seen: int
    ) -> None:
        check_method(method, settings)
        self.method, self.settings = method, settings
        per_round = min(settings.clients_per_round, num_seen)
        if settings.dp_epsilon > 0:
            self.noise_multiplier = noise_for_epsilon(
                settings.dp_epsilon,
                num_seen,
                per_round,
                settings.dp_delta,
                method.stats_releases,
                settings.num_server_rounds,
            )
        else:
            self.noise_multiplier = settings.dp_noise_multiplier
        self.accountant = Accountant(self.noise_multiplier, num_seen, per_round, settings.dp_delta)
        self.last_round: dict[str, float | None] = {}

    def replay(self, rounds: int) -> None:
        """Charge rounds 1..``rounds`` (a resumed run's spend so far)."""
        for server_round in range(1, rounds + 1):
            self.accountant.compose(self.method.stats_releases(server_round))

    def allows(self, server_round: int) -> bool:
        """Whether ``server_round`` fits in ``dp-max-epsilon`` (always, without a maximum)."""
        limit = self.settings.dp_max_epsilon
        if limit <= 0:
            return True
        return self.accountant.epsilon(self.method.stats_releases(server_round)) <= limit

    def _rng(self, server_round: int, purpose: int) -> np.random.Generator:
        if self.settings.dp_noise_source == "os":
            return np.random.default_rng()
        seed = seeds.derive_seed(self.settings.seed, server_round, purpose, seeds.STREAM_PRIVACY)
        return np.random.default_rng(seed)

    def _stats(self, stats: Mapping[str, np.ndarray], rng: np.random.Generator) -> Arrays:
        return privatise_stats(
            stats,
            self.noise_multiplier,
            self.settings.dp_stats_clip_norm,
            rng,
            self.method.log_scale_stats,
        )

    def located(self, server_round: int, replies: Mapping[int, Arrays]) -> dict[int, Arrays]:
        """Locate replies after the Gaussian mechanism, in client-id order."""
        rng = self._rng(server_round, _LOCATE)
        return {cid: self._stats(replies[cid], rng) for cid in sorted(replies)}

    def updates(
        self,
        server_round: int,
        sent: Arrays,
        updates: Sequence[tuple[int, ClientUpdate]],
    ) -> list[tuple[int, ClientUpdate]]:
        """Clipped, equally weighted and noised updates; their statistics privatised; their
        metrics withheld. ``sent`` are the shared weights the clients trained from."""
        ordered = sorted(updates, key=lambda item: item[0])
        declared = self.method.stats_releases(server_round) - int(
            self.method.needs_locate(server_round)
        )
        norms = [update_norm(u.arrays, sent) for _, u in ordered]
        # For choosing dp-clip-norm (these two numbers are the only facts the log keeps about
        # the raw updates; a median and a share of a round's clients, not per-client values).
        self.last_round = {
            "median_update_norm": float(np.median(norms)) if norms else None,
            "clipped_share": float(np.mean([n > self.settings.dp_clip_norm for n in norms]))
            if norms
            else None,
        }
        clipped = [clip_update(u.arrays, sent, self.settings.dp_clip_norm) for _, u in ordered]
        noisy = noise_updates(
            clipped,
            self.noise_multiplier,
            self.settings.dp_clip_norm,
            self._rng(server_round, _UPDATES),
        )
        stats_rng = self._rng(server_round, _STATS)
        out = []
        for (cid, update), arrays in zip(ordered, noisy, strict=True):
            if update.stats and declared < 1:
                raise ConfigError(
                    f"client {cid} sent statistics in round {server_round} that the method "
                    "does not declare (stats_releases): they would escape the accounting",
                    field="method",
                )
            stats = self._stats(update.stats, stats_rng) if update.stats else {}
            out.append(
                (cid, replace(update, arrays=arrays, num_examples=1, stats=stats, metrics={}))
            )
        return out

    def charge(self, server_round: int) -> dict[str, Any]:
        """Charge ``server_round`` and return what the run log records of the spend."""
        self.accountant.compose(self.method.stats_releases(server_round))
        return {**self.report(), **self.last_round}

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": self.accountant.epsilon(),
            "delta": self.settings.dp_delta,
            "noise_multiplier": self.noise_multiplier,
            "rounds_charged": len(self.accountant.releases),
        }
