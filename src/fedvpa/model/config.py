"""Architecture and loss hyper-parameters of the variational selector, with the paper's defaults.

One frozen dataclass travels everywhere (client, server, centralised references) so that a run's
model is fully described by it; ``validate`` runs in ``__post_init__`` so a bad value fails at the
point it is made, with a one-line ``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fedvpa.config import coerce_fields
from fedvpa.errors import ConfigError

ENCODERS = ("attention", "mean", "laplace")
SELECTORS = ("reward", "logit-bias")
PRIORS = ("standard", "mixture")
KL_ESTIMATORS = ("mc", "upper-bound")
PROTOTYPE_INITS = ("qr", "centroids")
LATENT_INFERENCE = ("auto", "encoder", "population", "prior")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of FedVPA-GP stage 1 (paper defaults: d=32, beta=0.1, lambda=1, ...)."""

    input_dim: int = 384
    hidden_dim: int = 128  # width of the pair feature g's hidden layer
    # Layers of the pair feature g: 1 = linear (no hidden layer), 2 = MLP with hidden_dim.
    # 1 since issue 10 (the paper's g is an MLP): an MLP g memorises each client's dozen pairs;
    # chosen on plural-4 and synthetic-4 (README, "Personalisation beyond two user types").
    feature_layers: int = 1
    # Dropout on the frozen backbone embeddings before g (see model/encoder.py).
    input_dropout: float = 0.0
    feature_dim: int = 64  # size of the pair feature f = g(a) - g(b)
    # Size of the latent preference z. 8 since issue 10 (the paper's d is 32), with the linear g;
    # it also bounds num-prototypes = "auto" (at most latent-dim groups).
    latent_dim: int = 8
    encoder: str = "attention"  # q(z | C): attention / mean (set encoders) / laplace
    # Antisymmetrise the set encoder: mu(C) = (e(C) - e(reversed C)) / 2. A client holds one
    # user type, so its local steps can fit its preference by moving the encoder's output by a
    # constant (its biases), which FedAvg then cancels between types; an odd encoder has no
    # constant output, so local steps can only teach it to read the choices.
    odd_encoder: bool = True
    # "laplace" encoder (model/encoder.py): Newton steps to the mode of the selector's own
    # posterior over z under N(0, laplace_prior_var I); no weights of its own.
    laplace_prior_var: float = 1.0
    laplace_steps: int = 3  # Newton steps of the laplace encoder
    # Multiplies the initial W of the logit-bias selector. The personal term f . W z is a
    # product of two small random maps at init (a saddle the latent escapes slowly); a larger
    # W starts z informative.
    coupling_init_scale: float = 1.0
    attention_heads: int = 4  # heads of the attention set encoder
    # The paper's choice-logit form. The VPL reward form ("reward") collapses (no active units)
    # under N(0, I) with beta = 0.1 on the synthetic data: see ``model/objective.py``.
    selector: str = "logit-bias"
    selector_hidden: int = 64  # hidden width of the reward selector
    prior: str = "standard"  # p(z): standard N(0, I) / mixture (federated mixture prior)
    beta: float = 0.1  # weight of the KL term
    kl_estimator: str = "mc"  # KL to the mixture prior: mc (samples) / upper-bound
    kl_samples: int = 8  # samples of the mc KL estimator
    tau: float = 1.0  # Gumbel-Softmax temperature of the mixture weights
    tau_final: float | None = None  # if set: tau anneals geometrically to it over the run
    exclude_own_component: bool = False  # a client's own component left out of its prior
    # How a client's z is read at evaluation. "encoder": the set encoder's posterior mean from
    # its labelled (seen) or context (unseen) pairs. "population": the posterior mean when the
    # prior is the population of clients' latest posterior means that the server keeps for the
    # mixture prior (point masses weighted by n_j), given the client's pairs through the
    # selector's likelihood: a dozen pairs then pick among where real clients are instead of
    # being placed by the encoder alone. "auto": population where the server keeps that
    # store (mixture prior or prototype pull), else "prior" (the encoder for the laplace
    # encoder, which already reads the selector's own posterior). "population" on FedVPL makes
    # its clients send their posterior after training, as FedVPA-GP's do. "prior": the same
    # Bayes step over prior_draws fixed quasi-random draws of N(0, I), the model's own prior, so
    # it needs no message; FedVPL's default (README, "Personalisation beyond two user types").
    latent_inference: str = "auto"
    prior_draws: int = 4096  # draws of N(0, I) that latent-inference = "prior" weighs
    # Weight of a second query NLL in each local step, at the z that latent-inference = "prior"
    # reads from the step's context pairs (the posterior mean over the prior_draws points,
    # differentiable through the selector's likelihood): it trains the selector to be read
    # well from a dozen pairs, which is what evaluation does. 0 = off. Needs the logit-bias
    # selector and the standard prior (model/objective.py, ``read_over_points``).
    read_weight: float = 0.0
    use_ortho: bool = True  # the orthogonal prototype loss
    # Prototype groups: a number, or "auto" (the server picks it at the first pull round, by
    # silhouette over 2 .. max_groups; see group_census and plan_round).
    num_prototypes: int | str = "auto"
    max_groups: int = 8  # largest group count num-prototypes = auto may pick
    # num-prototypes = "auto" under population inference: before the first pull round the
    # server asks every seen client once where the population of posterior means places it
    # (d floats each) and chooses the count from those placements instead of from its store of
    # the clients' latest encoder means. Finds 4 groups on 2 of 3 synthetic-4 seeds (6, 3, 2
    # without), but cost 1.04 points of final seen accuracy there, so it is not the default.
    # Skipped under DP (an unsampled release of every client). README, "A group census".
    group_census: bool = False
    prototype_radius: float = 5.0  # norm s of the orthogonal prototypes
    # Weight of the prototype pull (after warm-up and ramp). The paper's 1.0 cost FedVPA-GP 4-5
    # points on four user types, where the groups the server finds at the end of the warm-up are
    # not the types; 0.03 was the best of 1, 0.1 and 0.03 on plural-4 and synthetic-4 (README).
    ortho_lambda: float = 0.03
    ortho_gamma: float = 0.1  # weight of the prototypes' orthogonality term
    # Warm-up rounds under N(0, I) and without the prototype pull, so z first learns the
    # preference signal: a mixture prior built from unstructured posteriors, or k-means labels
    # on them, would pin every client to one point (measured; see methods/variational.py).
    prior_warmup_rounds: int = 10
    # Floor on the mixture components' variances: a component from a client with a handful of
    # pairs can be very tight, and a tight component makes KL(q || p_mix) dwarf the likelihood.
    prior_var_floor: float = 1.0
    # Rounds a client's posterior stays in the mixture prior (its latest one). 1 = the paper:
    # last round's participants only. See methods/variational.py (merge_components).
    prior_max_age: int = 10
    # Most mixture components a client receives: the server merges the store's components (one
    # per client within prior-max-age) into at most this many by weighted k-means on their means
    # and moment matching (model/prior_compression.py); the store itself stays exact. Bounds the
    # payload and the per-step KL cost at scale. 0 = send every component.
    prior_max_components: int = 0
    ortho_warmup_rounds: int = 10  # rounds without the prototype pull
    # Rounds over which lambda rises linearly from 0 after the warm-up (0 = switch on at once).
    ortho_ramp_rounds: int = 20
    # "qr": the paper's random orthonormal prototypes. "centroids": at the end of the warm-up the
    # server replaces them by the orthogonal radius-s set nearest the clients' k-means centroids
    # (orthogonal Procrustes), so the pull starts from the latent geometry the clients already have.
    prototype_init: str = "centroids"
    # Smallest k-means cluster as a share of the even share N / M: 1.0 is the paper's strict
    # balance; below 1 the server can follow an uneven split of the sampled clients.
    cluster_min_share: float = 0.5
    # What the pull draws to the prototype: a posterior sample "z" (the paper; it also shrinks
    # the posterior variance, since E||z - p||^2 = ||mu - p||^2 + sum sigma^2) or its mean "mu".
    pull_on: str = "mu"
    kl_anneal_steps: int = 0  # local steps over which beta rises from 0 (0 = none)
    z_samples: int = 1  # posterior samples of z per query
    dropout: float = 0.0  # dropout inside g and the set encoder
    logvar_min: float = -8.0  # lower clamp of the posterior log-variance
    logvar_max: float = 4.0  # upper clamp of the posterior log-variance
    posterior_subsamples: int = 8  # context subsets averaged into the posterior sent to the server
    nll_reduction: str = "sum"  # sum / mean over a step's queries

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive_ints = (
            "input_dim",
            "hidden_dim",
            "feature_dim",
            "latent_dim",
            "attention_heads",
            "selector_hidden",
            "kl_samples",
            "z_samples",
            "posterior_subsamples",
            "prior_draws",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", field=name)
        choices = {
            "encoder": ENCODERS,
            "selector": SELECTORS,
            "prior": PRIORS,
            "kl_estimator": KL_ESTIMATORS,
            "nll_reduction": ("sum", "mean"),
            "prototype_init": PROTOTYPE_INITS,
            "pull_on": ("z", "mu"),
            "latent_inference": LATENT_INFERENCE,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}", field=name
                )
        non_negative = (
            "beta",
            "ortho_lambda",
            "ortho_gamma",
            "dropout",
            "input_dropout",
            "prior_var_floor",
            "read_weight",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"must be a non-negative number, got {value!r}", field=name)
        for name in ("dropout", "input_dropout"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"must be < 1, got {getattr(self, name)!r}", field=name)
        if not self.tau > 0:
            raise ConfigError(f"must be > 0, got {self.tau!r}", field="tau")
        if self.tau_final is not None and not self.tau_final > 0:
            raise ConfigError(f"must be > 0 or unset, got {self.tau_final!r}", field="tau_final")
        if not 0 < self.cluster_min_share <= 1:
            raise ConfigError(
                f"must be in (0, 1], got {self.cluster_min_share!r}", field="cluster_min_share"
            )
        if self.feature_layers not in (1, 2):
            raise ConfigError(
                f"must be 1 or 2, got {self.feature_layers!r}", field="feature_layers"
            )
        if self.read_weight > 0 and (self.selector != "logit-bias" or self.prior != "standard"):
            raise ConfigError(
                "the read term reads z over draws of N(0, I) through the logit-bias selector; "
                'it needs selector = "logit-bias" and prior = "standard" (fedvpl, fedvpl+ortho; '
                "fedvpa-gp and fedvpl+gp use the mixture prior)",
                field="read_weight",
            )
        if self.latent_inference == "prior" and self.prior != "standard":
            raise ConfigError(
                '"prior" reads z over draws of N(0, I), which is not the mixture prior; '
                'use "population" or "encoder"',
                field="latent_inference",
            )
        if self.encoder == "laplace" and self.selector != "logit-bias":
            raise ConfigError(
                "the laplace encoder needs the logit-bias selector (linear in z)", field="encoder"
            )
        if not self.coupling_init_scale > 0:
            raise ConfigError(
                f"must be > 0, got {self.coupling_init_scale!r}", field="coupling_init_scale"
            )
        if not self.laplace_prior_var > 0:
            raise ConfigError(
                f"must be > 0, got {self.laplace_prior_var!r}", field="laplace_prior_var"
            )
        if not self.prototype_radius > 0:
            raise ConfigError(
                f"must be > 0, got {self.prototype_radius!r}", field="prototype_radius"
            )
        auto = self.num_prototypes == "auto"
        if not auto and (
            not isinstance(self.num_prototypes, int)
            or isinstance(self.num_prototypes, bool)
            or self.num_prototypes < 1
        ):
            raise ConfigError(
                f'must be a positive integer or "auto", got {self.num_prototypes!r}',
                field="num_prototypes",
            )
        if not isinstance(self.max_groups, int) or self.max_groups < 2:
            raise ConfigError(
                f"must be an integer >= 2, got {self.max_groups!r}", field="max_groups"
            )
        if auto and self.latent_dim < 2:
            raise ConfigError(
                '"auto" chooses 2 to max_groups orthogonal groups: needs latent_dim >= 2',
                field="num_prototypes",
            )
        if self.prototype_rows > self.latent_dim:
            name = "max_groups" if auto else "num_prototypes"
            raise ConfigError(
                f"{self.prototype_rows} orthogonal prototypes do not fit in "
                f"latent_dim={self.latent_dim}",
                field=name,
            )
        if self.encoder == "attention" and self.feature_dim % self.attention_heads:
            raise ConfigError(
                f"feature_dim={self.feature_dim} is not divisible by {self.attention_heads} heads",
                field="attention_heads",
            )
        counts = (
            "prior_warmup_rounds",
            "ortho_warmup_rounds",
            "ortho_ramp_rounds",
            "kl_anneal_steps",
            "laplace_steps",
            "prior_max_components",
        )
        if not isinstance(self.prior_max_age, int) or self.prior_max_age < 1:
            raise ConfigError(
                f"must be a positive integer, got {self.prior_max_age!r}", field="prior_max_age"
            )
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"must be a non-negative integer, got {value!r}", field=name)
        if not self.logvar_min < self.logvar_max:
            raise ConfigError("logvar_min must be < logvar_max", field="logvar_min")

    @property
    def auto_groups(self) -> bool:
        return self.num_prototypes == "auto"

    @property
    def prototype_rows(self) -> int:
        """Rows of the prototype array: the fixed count, or room for up to ``max_groups``."""
        if self.auto_groups:  # never more orthogonal prototypes than dimensions
            return min(self.max_groups, self.latent_dim)
        return int(self.num_prototypes)

    def tau_at(self, server_round: int, num_rounds: int) -> float:
        """Gumbel-Softmax temperature for a round: geometric anneal tau -> tau_final if set.

        Geometric rather than linear because the temperature acts multiplicatively on the logits.
        """
        if self.tau_final is None or num_rounds <= 1:
            return self.tau
        frac = min(max((server_round - 1) / (num_rounds - 1), 0.0), 1.0)
        return float(self.tau * (self.tau_final / self.tau) ** frac)

    def ortho_lambda_at(self, server_round: int) -> float:
        """Pull weight in a round: 0 during the warm-up, then a linear ramp to ``ortho_lambda``."""
        after = server_round - self.ortho_warmup_rounds
        if after <= 0:
            return 0.0
        if self.ortho_ramp_rounds == 0:
            return self.ortho_lambda
        return self.ortho_lambda * min(1.0, after / self.ortho_ramp_rounds)

    def beta_at(self, step: int) -> float:
        """KL weight at a local step: linear warm-up over ``kl_anneal_steps`` (0 = none)."""
        if self.kl_anneal_steps == 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.kl_anneal_steps)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.group_census:
            # Recorded only when on: off is how every earlier run chose, so their records
            # (resume identity, method kwargs, comparison fingerprints) stay valid.
            del out["group_census"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(unknown)}", field=unknown[0])
        return cls(**coerce_fields(cls, values))
