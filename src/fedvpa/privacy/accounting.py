"""What a run has spent: Renyi-DP accounting of client-level DP with ``dp-accounting``.

Each round samples ``k`` of the ``N`` seen clients uniformly without replacement (what
``protocol/round.py`` does), and a sampled client takes part in ``1 + s`` Gaussian mechanisms:
its weight update's share of the noisy mean, and ``s`` statistics releases (its posterior after
training, its locate reply). Several Gaussian mechanisms on the same client compose into one
with noise multiplier ``(sum_i sigma_i^-2)^-1/2``, so a round is one
``SampledWithoutReplacementDpEvent`` over that composition, accounted under the replace-one
relation its theorem (Wang, Balle and Kasiviswanathan 2019) needs. Flower's accounted DP mode
assumes Poisson sampling of one array message per client, which is neither fedvpa's sampling
nor its messages, hence the library directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant

from fedvpa.privacy.mechanism import release_sensitivity_ratio


def round_event(
    noise_multiplier: float, num_seen: int, per_round: int, releases: int
) -> dp_event.DpEvent:
    """One round: ``per_round`` of ``num_seen`` clients, each in ``1 + releases`` mechanisms."""
    sigma = release_sensitivity_ratio(noise_multiplier)
    inner = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(sigma)] * (1 + releases))
    return dp_event.SampledWithoutReplacementDpEvent(
        source_dataset_size=num_seen, sample_size=min(per_round, num_seen), event=inner
    )


class Accountant:
    """Epsilon spent after each round, for a fixed noise multiplier and sampling.

    Rounds differ only in their release count, so the spend is composed from the count of
    rounds per release count (one RDP evaluation per distinct round, not per round).
    """

    def __init__(self, noise_multiplier: float, num_seen: int, per_round: int, delta: float):
        if noise_multiplier <= 0:
            raise ValueError("noise multiplier must be > 0 to account for privacy")
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.noise_multiplier = noise_multiplier
        self.num_seen, self.per_round, self.delta = num_seen, per_round, delta
        self.releases: list[int] = []  # per charged round

    def compose(self, releases: int) -> None:
        """Charge one round in which each sampled client made ``releases`` statistics releases."""
        self.releases.append(int(releases))

    def epsilon(self, extra_round: int | None = None) -> float:
        """Spent so far; with ``extra_round``, as if one more round with that many releases ran."""
        rounds = self.releases + ([] if extra_round is None else [int(extra_round)])
        if not rounds:
            return 0.0
        rdp = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        for releases, count in sorted(Counter(rounds).items()):
            event = round_event(self.noise_multiplier, self.num_seen, self.per_round, releases)
            rdp.compose(event, count)
        return float(rdp.get_epsilon(self.delta))


def epsilon_for(
    noise_multiplier: float,
    num_seen: int,
    per_round: int,
    delta: float,
    releases_in_round: Callable[[int], int],
    num_rounds: int,
) -> float:
    """Epsilon after ``num_rounds`` rounds (``releases_in_round(r)`` releases in round r)."""
    accountant = Accountant(noise_multiplier, num_seen, per_round, delta)
    for server_round in range(1, num_rounds + 1):
        accountant.compose(releases_in_round(server_round))
    return accountant.epsilon()


def noise_for_epsilon(
    target_epsilon: float,
    num_seen: int,
    per_round: int,
    delta: float,
    releases_in_round: Callable[[int], int],
    num_rounds: int,
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to ``tolerance``, relative) whose spend after
    ``num_rounds`` rounds is at most ``target_epsilon``: bisection on a monotone function."""
    if target_epsilon <= 0:
        raise ValueError("target epsilon must be > 0")

    def spend(z: float) -> float:
        return epsilon_for(z, num_seen, per_round, delta, releases_in_round, num_rounds)

    low, high = 0.05, 1.0
    while spend(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier up to 1e4 reaches epsilon {target_epsilon}")
    while (high - low) / high > tolerance:
        mid = (low + high) / 2
        if spend(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
