"""Held-out judges for stage 2, and the statistics of win rates.

A hosted LLM judge is not available here, so each user type gets a **proxy judge**: a
Bradley-Terry reward model on the same sentence embeddings the selector reads (logistic
regression on ``e(A) - e(B)``), trained on labelled pairs that neither the selector nor the
policy saw. For the generated data sets (``synthetic-*``, ``plural-*``) those pairs are generated
afresh with a seed stage 1 did not use, and any comparison that also occurs in the stage-1 data
is dropped. A judge is only as good as its embedding and its templates: it measures whether a
reply *looks like* what that user type preferred in the embedded data, not whether it is good.

Win rates are measured on both reply orders, so a judge's position bias (its intercept) cancels;
each prompt then scores 1 (wins in both orders), 0.5 (split) or 0 (loses both). The interval of
a win rate is Wilson's on the prompts (the unit that is sampled independently), and the interval
of a difference between two policies on the same prompts is a paired bootstrap over prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedvpa.errors import ConfigError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
GENERATED = "generated"  # a judge's pairs: fresh draws of the stage-1 data generator
HELD_OUT_FILE_PAIRS = "held-out file pairs"  # ... or the data file's pairs no client held


# ---------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, percent: bool = True) -> str:
        scale, unit = (100.0, "%") if percent else (1.0, "")
        return (
            f"{self.estimate * scale:.1f}{unit} [{self.low * scale:.1f}, "
            f"{self.high * scale:.1f}] (n={self.n})"
        )

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def wilson_interval(successes: float, n: int, z: float = Z95) -> Interval:
    """Wilson's score interval for a proportion.

    Chosen over the normal (Wald) interval because win and refusal rates here are often near 0
    or 1 on ~100 prompts, where Wald's interval leaves [0, 1] or collapses to a point.
    ``successes`` may be fractional (ties count one half).
    """
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "wilson")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, "wilson")


def bootstrap_interval(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over the rows of ``values`` (rows = prompts, resampled together so
    that paired measurements on one prompt stay paired)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = np.array([statistic(values[i]) for i in idx])
    low, high = np.percentile(stats, [2.5, 97.5])
    return Interval(float(statistic(values)), float(low), float(high), n, "paired bootstrap")


def both_order_scores(p_first: np.ndarray, p_second: np.ndarray) -> np.ndarray:
    """Per prompt: 1 if X wins in both orders, 0.5 if the orders disagree, 0 if it loses both.

    ``p_first`` = P(X preferred | X shown first), ``p_second`` = P(X preferred | X shown
    second)."""
    return ((np.asarray(p_first) > 0.5).astype(float) + (np.asarray(p_second) > 0.5)) / 2.0


def win_rate(scores: np.ndarray) -> Interval:
    """Mean per-prompt score with Wilson's interval on the prompts (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    return wilson_interval(float(scores.sum()), len(scores))


# ---------------------------------------------------------------------- judges


@dataclass
class Judge:
    """A Bradley-Terry judge: ``P(A preferred) = sigmoid(w . (e(A) - e(B)) + b)``."""

    user_type: str
    weight: np.ndarray  # [D]
    bias: float
    train_pairs: int
    heldout_accuracy: float
    heldout_conflict_accuracy: float | None
    source: str = GENERATED  # where its pairs came from (GENERATED or HELD_OUT_FILE_PAIRS)

    def prob_first(self, emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        logit = (np.asarray(emb_a) - np.asarray(emb_b)) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-logit))

    def compare(self, emb_x: np.ndarray, emb_y: np.ndarray) -> np.ndarray:
        """Per prompt, X against Y in both orders (:func:`both_order_scores`)."""
        return both_order_scores(self.prob_first(emb_x, emb_y), 1.0 - self.prob_first(emb_y, emb_x))

    def to_json(self) -> dict[str, Any]:
        return {
            "user_type": self.user_type,
            "weight": [float(v) for v in self.weight],
            "bias": self.bias,
            "train_pairs": self.train_pairs,
            "heldout_accuracy": self.heldout_accuracy,
            "heldout_conflict_accuracy": self.heldout_conflict_accuracy,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Judge:
        return cls(
            str(data["user_type"]),
            np.asarray(data["weight"], dtype=np.float64),
            float(data["bias"]),
            int(data["train_pairs"]),
            float(data["heldout_accuracy"]),
            None
            if data.get("heldout_conflict_accuracy") is None
            else float(data["heldout_conflict_accuracy"]),
            str(data.get("source", GENERATED)),
        )


def is_generated(data: str) -> bool:
    """Whether the stage-1 data set is one fedvpa generates (and can draw fresh pairs of)."""
    from fedvpa.data.family import FAMILY

    return data in ("synthetic-2", "synthetic-4") or data in FAMILY


def pair_key(pair: Any) -> tuple[str, str, str]:
    """A pair's identity whatever the order of its replies."""
    a, b = sorted((pair.response_a, pair.response_b))
    return (pair.prompt, a, b)


def held_out_file_pairs(pairs: Sequence[Any], held: Sequence[Any]) -> list[Any]:
    """The pairs of a data file that no stage-1 client holds (``held``: every client's context,
    train and test pairs, seen or unseen): labelled pairs neither the selector nor the policy
    saw, which is what a held-out judge of a file data set (relabeled HH-RLHF) can learn from."""
    taken = {pair_key(p) for p in held}
    return [p for p in pairs if pair_key(p) not in taken]


def judge_pairs_source(flat: dict[str, Any], pairs_per_type: int, seed: int) -> list[Any]:
    """Fresh labelled pairs of the stage-1 data's generator, drawn with ``seed``.

    Only the generated data sets can make new pairs; for a file see ``held_out_file_pairs``.
    """
    from fedvpa.data.family import FAMILY, generate_family
    from fedvpa.data.synthetic import generate_synthetic

    data = str(flat.get("data", ""))
    if data in ("synthetic-2", "synthetic-4"):
        return generate_synthetic(
            num_types=int(data[-1]),
            pairs_per_type=pairs_per_type,
            conflict_share=float(flat.get("conflict-share", 0.5)),
            seed=seed,
        )
    if data in FAMILY:
        return generate_family(data, pairs_per_type=pairs_per_type, seed=seed)
    raise ConfigError(
        f"held-out judges need a generated stage-1 data set (synthetic-*, plural-*), not {data!r}",
        field="judges",
    )


def train_judges(
    pairs: Sequence[Any],
    embed: Callable[[list[str]], np.ndarray],
    *,
    exclude: set[tuple[str, str, str]] | None = None,
    heldout_share: float = 0.2,
    seed: int = 0,
    source: str = GENERATED,
) -> dict[str, Judge]:
    """One judge per user type, fitted on ``pairs`` (``PreferencePair``s) minus ``exclude``
    (``(prompt, reply, reply)`` keys the selector saw, in either order).

    Each pair enters in both orders, so the fit has no reason to learn a position bias; a
    ``heldout_share`` of each type's pairs is kept back to report the judge's own accuracy.
    """
    from sklearn.linear_model import LogisticRegression

    from fedvpa.alignment.rank import candidate_text

    exclude = exclude or set()
    kept = [
        p
        for p in pairs
        if (p.prompt, p.response_a, p.response_b) not in exclude
        and (p.prompt, p.response_b, p.response_a) not in exclude
    ]
    by_type: dict[str, list[Any]] = {}
    for p in kept:
        if p.user_type:
            by_type.setdefault(str(p.user_type), []).append(p)
    if not by_type:
        raise ConfigError("no labelled pairs with a user type for the judges", field="judges")
    texts = sorted(
        {candidate_text(p.prompt, r) for p in kept for r in (p.response_a, p.response_b)}
    )
    vectors = np.asarray(embed(texts), dtype=np.float64)
    row = {t: i for i, t in enumerate(texts)}
    rng = np.random.default_rng(seed)
    judges: dict[str, Judge] = {}
    for user_type, own in sorted(by_type.items()):
        order = rng.permutation(len(own))
        cut = max(1, int(round(len(own) * (1 - heldout_share))))
        train = [own[i] for i in order[:cut]]
        test = [own[i] for i in order[cut:]]

        def diffs(ps: list[Any]) -> tuple[np.ndarray, np.ndarray]:
            a = vectors[[row[candidate_text(p.prompt, p.response_a)] for p in ps]]
            b = vectors[[row[candidate_text(p.prompt, p.response_b)] for p in ps]]
            y = np.array([p.preferred == 0 for p in ps], dtype=int)
            return a - b, y

        x, y = diffs(train)
        model = LogisticRegression(C=1.0, max_iter=2000)
        model.fit(np.concatenate([x, -x]), np.concatenate([y, 1 - y]))
        judge = Judge(
            user_type, model.coef_[0].copy(), float(model.intercept_[0]), len(train), 0.0, None,
            source,
        )  # fmt: skip
        if test:
            xt, yt = diffs(test)
            pred = (judge.prob_first(xt, np.zeros_like(xt)) > 0.5).astype(int)
            judge.heldout_accuracy = float((pred == yt).mean())
            conflict = np.array([bool(p.conflict) for p in test])
            if conflict.any():
                judge.heldout_conflict_accuracy = float((pred == yt)[conflict].mean())
        judges[user_type] = judge
    return judges
