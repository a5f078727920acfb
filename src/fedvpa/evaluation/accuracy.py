"""Per-type accuracy of any Predictor, in both A/B orders, split by seen / unseen clients.

A client computes its own counts (``evaluate_client``), so federated evaluation only ships sums;
``merge_counts`` turns any list of counts into the report. Accuracy is macro-averaged over user
types because types can have different numbers of clients. Each pair is scored in both orders
(``p_avg = (p(A,B) + 1 - p(B,A)) / 2``) so position bias cannot inflate a score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError
from fedvpa.methods.base import Predictor

SPLITS = ("context", "train", "test")
COUNT_KEYS = (
    "n",
    "correct",
    "consistent",
    "nll_sum",
    "n_conflict",
    "correct_conflict",
    "conflict_known",
)


def evaluate_client(
    predictor: Predictor, client: ClientTensors, split: str = "test"
) -> dict[str, float]:
    """A client's own counts on one split (numbers only, so they fit a Flower MetricRecord)."""
    if split not in SPLITS:
        raise ConfigError(f"must be one of {', '.join(SPLITS)}, got {split!r}", field="split")
    pairs = getattr(client, split)
    counts = {key: 0.0 for key in COUNT_KEYS}
    counts["type_index"] = float(client.type_index)
    counts["unseen"] = float(client.unseen)
    counts["conflict_known"] = float(pairs.conflict_known)
    if len(pairs) == 0:
        return counts
    p = predictor.prob_a_preferred(client, pairs).detach().double().reshape(-1)
    p_swapped = predictor.prob_a_preferred(client, pairs.swapped()).detach().double().reshape(-1)
    p_avg = 0.5 * (p + 1.0 - p_swapped)
    label = pairs.label.double()
    hit = ((p_avg > 0.5).double() == label).double()
    hit = torch.where(p_avg == 0.5, torch.full_like(hit, 0.5), hit)
    p_true = torch.where(label > 0.5, p_avg, 1.0 - p_avg).clamp(1e-12, 1.0)
    counts["n"] = float(len(pairs))
    counts["correct"] = float(hit.sum())
    counts["consistent"] = float(((p > 0.5) == (p_swapped < 0.5)).double().sum())
    counts["nll_sum"] = float(-torch.log(p_true).sum())
    if pairs.conflict_known:
        conflict = pairs.conflict.bool()
        counts["n_conflict"] = float(conflict.sum())
        counts["correct_conflict"] = float(hit[conflict].sum())
    return counts


def _group_report(
    rows: list[Mapping[str, float]], names: Mapping[int, str], key: str, n_key: str
) -> dict[str, float] | None:
    per_type: dict[str, dict[str, float]] = {}
    for row in rows:
        name = names.get(int(row["type_index"]), str(int(row["type_index"])))
        acc = per_type.setdefault(name, {"n": 0.0, "correct": 0.0})
        acc["n"] += row[n_key]
        acc["correct"] += row[key]
    report: dict[str, float] = {}
    accs = []
    total_n = 0.0
    for name in sorted(per_type):
        n = per_type[name]["n"]
        if n > 0:
            report[name] = per_type[name]["correct"] / n
            accs.append(report[name])
            total_n += n
    if not accs:
        return None
    report["macro"] = sum(accs) / len(accs)
    report["n"] = total_n
    return report


def merge_counts(
    counts: Iterable[Mapping[str, float]],
    type_names: Mapping[int, str] | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Report from per-client counts: accuracy per type + macro for seen / unseen / all clients.

    Also conflict-pair accuracy (when the data knows which pairs are conflicts), the share of
    pairs predicted consistently in both orders, and the mean NLL.
    """
    rows = list(counts)
    if type_names is None:
        names: Mapping[int, str] = {}
    elif isinstance(type_names, Mapping):
        names = type_names
    else:
        names = dict(enumerate(type_names))
    groups = {
        "seen": [r for r in rows if not r["unseen"]],
        "unseen": [r for r in rows if r["unseen"]],
        "all": rows,
    }
    report: dict[str, Any] = {}
    conflict: dict[str, Any] = {}
    for group, members in groups.items():
        acc = _group_report(members, names, "correct", "n")
        if acc is not None:
            report[group] = acc
        known = [r for r in members if r["conflict_known"]]
        cacc = _group_report(known, names, "correct_conflict", "n_conflict")
        if cacc is not None:
            conflict[group] = cacc
    if conflict:
        report["conflict"] = conflict
    n = sum(r["n"] for r in rows)
    report["position_consistency"] = sum(r["consistent"] for r in rows) / n if n else math.nan
    report["nll"] = sum(r["nll_sum"] for r in rows) / n if n else math.nan
    report["num_pairs"] = n
    report["num_clients"] = len(rows)
    return report


def evaluate(
    predictor: Predictor, clients: Sequence[ClientTensors], split: str = "test"
) -> dict[str, Any]:
    """Evaluate a predictor on every client's ``split`` pairs (see ``merge_counts``)."""
    names = {c.type_index: c.user_type for c in clients}
    return merge_counts([evaluate_client(predictor, c, split) for c in clients], names)


def flatten_report(report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float | None]:
    """Nested report -> ``{"eval/seen/macro": 0.61, ...}`` (non-finite values become None)."""
    out: dict[str, float | None] = {}
    for key, value in report.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            out.update(flatten_report(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value) if math.isfinite(float(value)) else None
    return out
