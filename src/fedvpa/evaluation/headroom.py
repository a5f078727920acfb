"""Personalisation headroom: how much can ANY method gain by inferring a user's type from k pairs?

A personalised reward model only beats a monolithic one if a client's few labelled pairs say
which user type it is. This module measures that ceiling directly on a data set, independent of
any latent model:

1. fit one logistic probe per user type and one on everything (the monolithic probe) on pair
   features ``emb(A) - emb(B)``, cross-fitted so every pair is scored by probes that never saw it;
2. build synthetic clients of one type from k context pairs plus one query pair, and score the
   query with the *Bayes-optimal* personalised predictor that knows the per-type probes: the type
   posterior from the k context labels weights the per-type predictions.

Step 2 is what an ideal encoder ``q(z | C)`` could do with perfect per-type models. If it is
barely above the monolithic probe at the context size of an experiment, no latent model can be
expected to beat the monolithic baseline there, however well it trains: the data's per-pair
signal, not the method, is the limit. The probes are linear, so the numbers are an estimate of
the ceiling for these features, not a bound over all models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.errors import ConfigError

DEFAULT_KS = (0, 1, 2, 4, 8, 16, 32, 64)
DEFAULT_CS = (0.03, 0.1, 0.3, 1.0)
_CHUNK = 2000
_INNER_FOLDS = 3  # cross-validation folds that pick each probe's C
_KEY_BUDGET = 4_000_000  # random keys per chunk on the small-pool path (32 MB of float64)


def draw_distinct(pool_size: int, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows of ``size`` distinct indices in ``range(pool_size)``.

    Each row's set is a uniform draw, and its last entry a uniform member of that set (the query
    of a simulated client; the others are its unordered context). Large pools: draw with
    replacement and redraw the rows that repeat an index (exact rejection sampling, cheap when
    repeats are rare). Small pools: the ``size`` smallest of random keys.
    """
    if size > pool_size:
        raise ValueError(f"cannot draw {size} distinct indices from {pool_size}")
    if size * size <= pool_size:  # P(a row repeats) <= size^2 / (2 * pool_size) <= 1/2
        rows = rng.integers(0, pool_size, (count, size))
        while True:
            ordered = np.sort(rows, axis=1)
            bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
            if len(bad) == 0:
                return rows
            rows[bad] = rng.integers(0, pool_size, (len(bad), size))
    out = np.empty((count, size), dtype=np.int64)
    step = max(1, _KEY_BUDGET // pool_size)
    for start in range(0, count, step):
        keys = rng.random((min(step, count - start), pool_size))
        # argpartition at size - 1: positions < size hold the smallest keys, and position
        # size - 1 exactly the largest of them, a uniform member of the set (keys are iid). The
        # order of the other positions depends on memory layout, so only that one is used apart.
        out[start : start + len(keys)] = np.argpartition(keys, size - 1, axis=1)[:, :size]
    return out


def pair_log_likelihoods(p_by_type: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[n, T]`` log-likelihood of each pair's observed label under each type's model.

    ``p_by_type[i, t]`` is type t's probability that A is preferred; ``labels[i]`` is 1 if A was.
    """
    p = np.clip(np.asarray(p_by_type, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    y = np.asarray(labels, dtype=np.float64)[:, None]
    return y * np.log(p) + (1.0 - y) * np.log1p(-p)


def type_posterior(context_loglik: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Posterior over types given context log-likelihoods ``[..., k, T]`` (softmax of the sums)."""
    logits = np.asarray(log_prior) + np.asarray(context_loglik).sum(axis=-2)
    logits = logits - logits.max(axis=-1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=-1, keepdims=True)


def _credit(hit: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """1 for a hit, 0.5 for a tie, 0 otherwise (ties are coin flips)."""
    return np.where(tie, 0.5, hit.astype(np.float64))


@dataclass(frozen=True)
class PersonalisedPoint:
    """Monte Carlo estimates for one context size k, per user type (index order of the data)."""

    k: int
    type_identified: list[float]  # P(the true type has the highest posterior)
    accuracy: list[float]  # accuracy of the Bayes-mixture prediction on the query pair
    accuracy_se: list[float]  # Monte Carlo standard error of ``accuracy``
    trials: int

    @property
    def macro_identified(self) -> float:
        return float(np.mean(self.type_identified))

    @property
    def macro_accuracy(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def macro_se(self) -> float:
        return float(math.sqrt(sum(s * s for s in self.accuracy_se)) / len(self.accuracy_se))


def simulate_personalised(
    p_by_type: np.ndarray,
    labels: np.ndarray,
    types: np.ndarray,
    k: int,
    trials: int,
    rng: np.random.Generator,
    log_prior: np.ndarray | None = None,
) -> PersonalisedPoint:
    """Bayes-optimal personalised accuracy with k labelled context pairs, per user type.

    Each trial draws k + 1 distinct pairs of one type (k context, 1 query), so a query's own label
    never informs its prediction. ``log_prior`` defaults to uniform over the T types.
    """
    p_by_type = np.asarray(p_by_type, dtype=np.float64)
    labels = np.asarray(labels)
    types = np.asarray(types)
    n, num_types = p_by_type.shape
    if labels.shape != (n,) or types.shape != (n,):
        raise ConfigError("p_by_type, labels and types must describe the same pairs", field="pairs")
    if k < 0 or trials < 1:
        raise ConfigError(f"need k >= 0 and trials >= 1, got k={k}, trials={trials}", field="k")
    prior = np.full(num_types, -math.log(num_types)) if log_prior is None else np.asarray(log_prior)
    loglik = pair_log_likelihoods(p_by_type, labels)
    identified, accuracy, se = [], [], []
    for t in range(num_types):
        pool = np.flatnonzero(types == t)
        if len(pool) < k + 1:
            raise ConfigError(
                f"user type {t} has {len(pool)} pairs; context size {k} needs at least {k + 1}",
                field="k",
            )
        ident_sum, hits = 0.0, []
        for start in range(0, trials, _CHUNK):
            m = min(_CHUNK, trials - start)
            drawn = pool[draw_distinct(len(pool), k + 1, m, rng)]
            ctx, query = drawn[:, :k], drawn[:, k]
            post = type_posterior(loglik[ctx], prior)  # [m, T]
            others = np.delete(post, t, axis=1).max(axis=1) if num_types > 1 else np.zeros(m)
            ident_sum += _credit(post[:, t] > others, post[:, t] == others).sum()
            p = (post * p_by_type[query]).sum(axis=1)
            hits.append(_credit((p > 0.5) == (labels[query] == 1), p == 0.5))
        hit = np.concatenate(hits)
        identified.append(float(ident_sum / trials))
        accuracy.append(float(hit.mean()))
        se.append(float(hit.std(ddof=0) / math.sqrt(trials)))
    return PersonalisedPoint(k, identified, accuracy, se, trials)


def fit_probe(x: np.ndarray, y: np.ndarray, costs: Sequence[float], folds: int, seed: int):
    """Logistic probe whose inverse regularisation C is picked by inner cross-validated log-loss.

    No intercept: ``p(B over A) = 1 - p(A over B)`` exactly, as for the project's siamese models.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    def probe(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, fit_intercept=False, max_iter=3000)

    inner = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = [
        cross_val_score(probe(c), x, y, cv=inner, scoring="neg_log_loss").mean() for c in costs
    ]
    best = float(costs[int(np.argmax(scores))])
    return probe(best).fit(x, y), best


def cross_fitted_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    types: np.ndarray,
    num_types: int,
    folds: int = 5,
    costs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Per-type and monolithic probe probabilities for every pair, each from an out-of-fold fit.

    Returns ``(p_by_type [n, T], p_mono [n], chosen_C)``; the regularisation strength of each probe
    is picked by an inner cross-validation on that probe's training rows.
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    t = np.asarray(types).astype(int)
    n = len(y)
    p_by_type, p_mono = np.zeros((n, num_types)), np.zeros(n)
    chosen: dict[str, list[float]] = {"mono": []} | {str(j): [] for j in range(num_types)}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(x, t * 2 + y))
    if progress:
        from tqdm.auto import tqdm

        splits = tqdm(splits, desc="fitting probes", unit="fold")
    for fit_idx, score_idx in splits:
        for j in range(num_types):
            rows = fit_idx[t[fit_idx] == j]
            if len(np.unique(y[rows])) < 2:
                raise ConfigError(
                    f"user type {j} has one label only in a fold; it needs both", field="label"
                )
            probe, c = fit_probe(x[rows], y[rows], costs, _INNER_FOLDS, seed)
            p_by_type[score_idx, j] = probe.predict_proba(x[score_idx])[:, 1]
            chosen[str(j)].append(c)
        mono, c = fit_probe(x[fit_idx], y[fit_idx], costs, _INNER_FOLDS, seed)
        p_mono[score_idx] = mono.predict_proba(x[score_idx])[:, 1]
        chosen["mono"].append(c)
    return p_by_type, p_mono, chosen


def _per_type_accuracy(p: np.ndarray, labels: np.ndarray, types: np.ndarray, t: int) -> float:
    rows = types == t
    return float(_credit((p[rows] > 0.5) == (labels[rows] == 1), p[rows] == 0.5).mean())


@dataclass
class HeadroomReport:
    """Probe accuracies per user type and the personalised ceiling against k."""

    user_types: list[str]
    pairs_per_type: list[int]
    oracle: list[float]  # each type's pairs scored by that type's probe
    monolithic: list[float]  # each type's pairs scored by the probe fit on everything
    models_agree: float  # share of pairs where the per-type probes pick the same reply
    points: list[PersonalisedPoint]
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def oracle_macro(self) -> float:
        return float(np.mean(self.oracle))

    @property
    def monolithic_macro(self) -> float:
        return float(np.mean(self.monolithic))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["oracle_macro"] = self.oracle_macro
        out["monolithic_macro"] = self.monolithic_macro
        for point, raw in zip(self.points, out["points"], strict=True):  # type: ignore[arg-type]
            raw["macro_identified"] = point.macro_identified
            raw["macro_accuracy"] = point.macro_accuracy
            raw["macro_se"] = point.macro_se
        return out


def personalisation_headroom(
    features: np.ndarray,
    labels: np.ndarray,
    types: np.ndarray,
    user_types: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    trials: int = 20000,
    folds: int = 5,
    costs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    progress: bool = False,
) -> HeadroomReport:
    """Fit the probes and simulate the Bayes-optimal personalised predictor at each k."""
    types = np.asarray(types).astype(int)
    labels = np.asarray(labels).astype(int)
    num_types = len(user_types)
    if num_types < 2:
        raise ConfigError("headroom needs at least 2 user types in the data", field="user_type")
    if not np.all(np.isfinite(features)):
        raise ConfigError("pair features contain NaN or infinity", field="features")
    counts = [int((types == j).sum()) for j in range(num_types)]
    # Each (type, label) needs _INNER_FOLDS pairs in every outer fold's fitting part for the
    # inner choice of C, plus one to spare; checked before anything is fitted, naming the type.
    need = math.ceil(_INNER_FOLDS * folds / max(1, folds - 1)) + 1
    for j, name in enumerate(user_types):
        for label, side in ((1, "A"), (0, "B")):
            have = int(((types == j) & (labels == label)).sum())
            if have < need:
                raise ConfigError(
                    f"user type {name!r} has {have} pairs where {side} is preferred; the probes "
                    f"need at least {need} of each (fewer folds need fewer)",
                    field="label",
                )
    if ks and max(ks) + 1 > min(counts):  # checked before the probes are fitted
        raise ConfigError(
            f"context size {max(ks)} needs {max(ks) + 1} pairs of every user type; the smallest "
            f"type has {min(counts)}",
            field="ks",
        )
    p_by_type, p_mono, chosen = cross_fitted_probabilities(
        features, labels, types, num_types, folds, costs, seed, progress
    )
    rng = np.random.default_rng(seed)
    points = [simulate_personalised(p_by_type, labels, types, k, trials, rng) for k in ks]
    agree = float(np.mean((p_by_type > 0.5).all(axis=1) | (p_by_type <= 0.5).all(axis=1)))
    return HeadroomReport(
        user_types=list(user_types),
        pairs_per_type=counts,
        oracle=[_per_type_accuracy(p_by_type[:, j], labels, types, j) for j in range(num_types)],
        monolithic=[_per_type_accuracy(p_mono, labels, types, j) for j in range(num_types)],
        models_agree=agree,
        points=points,
        settings={
            "ks": list(ks),
            "trials": trials,
            "folds": folds,
            "costs": list(costs),
            "seed": seed,
            "chosen_C": chosen,
        },
    )


def render_headroom(report: HeadroomReport, title: str = "Personalisation headroom") -> str:
    """Markdown: probe accuracies, then the Bayes-optimal personalised ceiling against k."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    types = report.user_types
    lines = [
        f"## {title}",
        "",
        "Linear probes on `emb(A) - emb(B)`, cross-fitted (accuracy %, each pair scored once):",
        "",
        "| probe | " + " | ".join(types) + " | macro |",
        "|---|" + "---|" * (len(types) + 1),
        f"| per-type oracle | {' | '.join(map(pct, report.oracle))} | {pct(report.oracle_macro)} |",
        f"| monolithic | {' | '.join(map(pct, report.monolithic))} | "
        f"{pct(report.monolithic_macro)} |",
        "",
        f"The per-type probes pick the same reply on {pct(report.models_agree)} % of pairs.",
        "",
        "Bayes-optimal personalised predictor (knows the per-type probes, infers the type from k "
        f"labelled context pairs; {report.points[0].trials if report.points else 0} trials per "
        "type, ± one Monte Carlo standard error):",
        "",
        "| k | type identified % | personalised macro % | gain over monolithic |",
        "|---|---|---|---|",
    ]
    for point in report.points:
        gain = 100 * (point.macro_accuracy - report.monolithic_macro)
        lines.append(
            f"| {point.k} | {pct(point.macro_identified)} | {pct(point.macro_accuracy)} ± "
            f"{100 * point.macro_se:.1f} | {gain:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def partition_context_sizes(clients: Sequence[ClientTensors]) -> dict[str, int]:
    """What a posterior reads at evaluation: labelled pairs of seen clients, context of unseen.

    Medians, because partitions may draw client sizes from a range.
    """
    sizes: dict[str, int] = {}
    seen = [len(c.labelled) for c in clients if not c.unseen]
    unseen = [len(c.context) for c in clients if c.unseen]
    if seen:
        sizes["seen"] = int(np.median(seen))
    if unseen:
        sizes["unseen"] = int(np.median(unseen))
    return sizes


def client_headroom(
    clients: Sequence[ClientTensors],
    user_types: Sequence[str],
    seed: int = 0,
    trials: int = 20000,
    folds: int = 5,
) -> dict[str, object]:
    """Headroom of a partition at its own context sizes, on every pair of every client.

    The probes are cross-fitted, so pooling test pairs in is safe: no pair is scored by a probe
    that saw it. Returns ``HeadroomReport.to_dict()`` plus ``context_sizes`` (seen / unseen).
    """
    pairs = [p for c in clients for p in (c.context, c.train, c.test) if len(p)]
    if not pairs:
        raise ConfigError("no pairs in the partition", field="clients")
    features = torch.cat([p.emb_a - p.emb_b for p in pairs]).double().numpy()
    labels = torch.cat([p.label for p in pairs]).numpy()
    types = np.concatenate(
        [np.full(len(p), c.type_index) for c in clients for p in (c.context, c.train, c.test)]
    )
    sizes = partition_context_sizes(clients)
    ks = sorted({0, *sizes.values()})
    report = personalisation_headroom(
        features, labels, types, user_types, ks=ks, trials=trials, folds=folds, seed=seed
    )
    return {**report.to_dict(), "context_sizes": sizes}


def _pair_arrays(pairs: PairTensors) -> tuple[np.ndarray, np.ndarray]:
    """Probe features ``emb(A) - emb(B)`` and labels of ``pairs``."""
    return (pairs.emb_a - pairs.emb_b).double().numpy(), pairs.label.numpy().astype(int)


def _seen_training_set(
    clients: Sequence[ClientTensors],
) -> tuple[list[ClientTensors], np.ndarray, np.ndarray, np.ndarray, int]:
    """The seen clients with labelled pairs, and their pairs stacked: features, labels, the row's
    client (index into the returned list) and the number of user types."""
    seen = [c for c in clients if not c.unseen and len(c.labelled)]
    if not seen:
        raise ConfigError("no seen client with labelled pairs", field="clients")
    fitted = [_pair_arrays(c.labelled) for c in seen]
    x = np.concatenate([f[0] for f in fitted])
    y = np.concatenate([f[1] for f in fitted])
    owner = np.concatenate([np.full(len(f[1]), i) for i, f in enumerate(fitted)])
    return seen, x, y, owner, 1 + max(c.type_index for c in clients)


def _types_with_both_labels(y: np.ndarray, t: np.ndarray, num_types: int) -> range:
    """``range(num_types)``, after checking that every type's pairs hold both labels (a probe
    cannot be fitted otherwise)."""
    for j in range(num_types):
        if len(np.unique(y[t == j])) < 2:
            raise ConfigError(
                f"user type {j} has fewer than two labels among the seen clients", field="label"
            )
    return range(num_types)


class _Indifferent:
    """A component left with no pairs of both labels: it says 0.5 on every pair, so it neither
    wins a client nor predicts anything (an EM component that lost its clients)."""

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.full((len(features), 2), 0.5)


def _probe_probabilities(probes: Sequence, features: np.ndarray) -> np.ndarray:
    """``[n, T]``: each probe's probability that A is preferred, clipped away from 0 and 1."""
    p = np.stack([probe.predict_proba(features)[:, 1] for probe in probes], axis=1)
    return p.clip(1e-6, 1 - 1e-6)


def score_real_clients(
    clients: Sequence[ClientTensors],
    probes: Sequence,
    log_prior: np.ndarray,
    with_known_type: bool = False,
) -> dict[str, float]:
    """Macro accuracy (0-1) of the probes' Bayes mixture on every real client's test pairs, the
    mixture weights read from the client's own labelled pairs (seen) or context pairs (unseen),
    as the federated evaluation reads ``z``. ``with_known_type`` (the probes are the user
    types', one per type in type order): also ``{split}_known_type``, each client scored by its
    own type's probe."""
    out: dict[str, float] = {}
    for split, unseen in (("seen", False), ("unseen", True)):
        personal: dict[int, list[float]] = {}
        known: dict[int, list[float]] = {}
        for c in clients:
            if c.unseen != unseen or not len(c.test):
                continue
            ctx_x, ctx_y = _pair_arrays(c.context if unseen else c.labelled)
            test_x, test_y = _pair_arrays(c.test)
            loglik = pair_log_likelihoods(_probe_probabilities(probes, ctx_x), ctx_y)  # [k, T]
            posterior = type_posterior(loglik, log_prior)
            p_test = _probe_probabilities(probes, test_x)
            p = p_test @ posterior
            hit = _credit((p > 0.5) == (test_y == 1), p == 0.5)
            personal.setdefault(c.type_index, []).append(float(hit.mean()))
            if with_known_type:
                own = p_test[:, c.type_index]
                known.setdefault(c.type_index, []).append(
                    float(_credit((own > 0.5) == (test_y == 1), own == 0.5).mean())
                )
        if personal:
            out[split] = float(np.mean([np.mean(v) for v in personal.values()]))
        if known:
            out[f"{split}_known_type"] = float(np.mean([np.mean(v) for v in known.values()]))
    return out


def federation_ideal(
    clients: Sequence[ClientTensors], seed: int = 0, costs: Sequence[float] = DEFAULT_CS
) -> dict[str, float]:
    """The Bayes-optimal personalised predictor restricted to what a federation holds.

    ``client_headroom`` fits its probes on (out-of-fold) pairs of every client, test pairs
    included, and scores simulated clients. Here the per-type probes see only the seen clients'
    labelled pairs (context + train, the pairs a federated method trains on), and each real
    client is scored on its own test pairs, its type posterior read from its own labelled pairs
    (seen) or context pairs (unseen), as the federated evaluation does. If this matched ideal is
    close to ``client_headroom``'s, a method's shortfall is not the amount of training data but
    its inference of each client's type without type labels. Returns macro accuracies (0-1):
    ``seen``, ``unseen``, and ``seen_known_type`` / ``unseen_known_type`` (the true type's probe).
    """
    seen, x, y, owner, num_types = _seen_training_set(clients)
    t = np.array([seen[i].type_index for i in owner])
    probes = [
        fit_probe(x[t == j], y[t == j], costs, _INNER_FOLDS, seed)[0]
        for j in _types_with_both_labels(y, t, num_types)
    ]
    uniform = np.full(num_types, -math.log(num_types))
    return score_real_clients(clients, probes, uniform, with_known_type=True)


def em_from_types(
    clients: Sequence[ClientTensors],
    steps: int,
    seed: int = 0,
    costs: Sequence[float] = DEFAULT_CS,
    folds: int = 4,
) -> list[dict[str, float]]:
    """Soft EM over a mixture of per-type probes, *started at the true types*: does the data's
    own likelihood keep them?

    The matched ideal (``federation_ideal``) fits each type's probe with the type labels, which
    no federated method has. A method that must find the types from the labels alone can at best
    reach a fixed point of the likelihood. Step 0 here is the matched ideal with each type's C
    (picked by cross-validation on the true types); each later step reads every seen client's
    responsibilities (its posterior over the components, from its labelled pairs, under probes
    fitted on the other ``folds - 1`` folds of clients, so that a client never votes for the
    probe it trained) and refits each component on every seen pair weighted by its client's
    responsibility. If accuracy holds over the steps, the true types are a fixed point and the
    ideal is in reach of type discovery; if it falls, the ideal needs the labels.

    Returns one row per step (0 .. ``steps``): ``seen`` / ``unseen`` macro accuracy (0-1),
    ``agreement`` (share of seen clients whose largest responsibility is their true type) and
    ``smallest_share`` (the smallest component's mixing weight: 0 = a type lost)."""
    from sklearn.linear_model import LogisticRegression

    if steps < 0:
        raise ConfigError(f"must be >= 0, got {steps}", field="steps")
    seen, x, y, owner, num_types = _seen_training_set(clients)
    truth = np.array([c.type_index for c in seen])
    cs = [
        fit_probe(x[truth[owner] == j], y[truth[owner] == j], costs, _INNER_FOLDS, seed)[1]
        for j in _types_with_both_labels(y, truth[owner], num_types)
    ]
    resp = np.eye(num_types)[truth]  # [clients, T]
    fold = np.random.default_rng(seed).permutation(len(seen)) % folds

    def fit(rows: np.ndarray) -> list:
        probes = []
        for j in range(num_types):
            w = resp[owner, j] * rows
            keep = w > 1e-9
            if len(np.unique(y[keep])) < 2:
                probes.append(_Indifferent())
                continue
            probe = LogisticRegression(C=cs[j], fit_intercept=False, max_iter=3000)
            probes.append(probe.fit(x[keep], y[keep], sample_weight=w[keep]))
        return probes

    history = []
    for step in range(steps + 1):
        share = resp.mean(axis=0)
        log_prior = np.log(np.maximum(share, 1e-12))
        scores = score_real_clients(clients, fit(np.ones(len(y))), log_prior)
        history.append(
            {
                "step": float(step),
                "seen": scores.get("seen", float("nan")),
                "unseen": scores.get("unseen", float("nan")),
                "agreement": float((resp.argmax(axis=1) == truth).mean()),
                "smallest_share": float(share.min()),
            }
        )
        if step == steps:
            break
        new = np.zeros_like(resp)
        for f in range(folds):
            probes = fit((fold[owner] != f).astype(np.float64))
            for i in np.flatnonzero(fold == f):
                fx, fy = _pair_arrays(seen[i].labelled)
                loglik = pair_log_likelihoods(_probe_probabilities(probes, fx), fy)
                new[i] = type_posterior(loglik, log_prior)
        resp = new
    return history
