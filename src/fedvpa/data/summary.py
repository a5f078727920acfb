"""``fedvpa data summary``: counts and length statistics, never the texts.

HH-RLHF contains offensive text, and a summary is something people paste into issues and logs, so
nothing here returns or renders a prompt or a reply: only counts, shares and word-length stats.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from fedvpa.data.partition import FederatedPartition
from fedvpa.data.schema import PreferencePair


def _length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {
        "min": min(lengths),
        "median": float(statistics.median(lengths)),
        "mean": round(statistics.fmean(lengths), 1),
        "max": max(lengths),
    }


def label_disagreement(pairs: Sequence[PreferencePair]) -> tuple[int, float | None]:
    """(comparisons labelled by 2+ user types, share of them whose types disagree).

    A comparison is the prompt with its unordered pair of replies, so A/B order does not matter.
    The share is None when no comparison carries two types (e.g. the relabeled HH-RLHF data, where
    each comparison is labelled under one objective only).
    """
    chosen_by: dict[tuple[str, frozenset[str]], dict[str, set[str]]] = defaultdict(
        lambda: defaultdict(set)
    )
    for p in pairs:
        if p.user_type is None:
            continue
        key = (p.prompt, frozenset((p.response_a, p.response_b)))
        chosen_by[key][p.user_type].add(p.chosen)
    multi = [by_type for by_type in chosen_by.values() if len(by_type) >= 2]
    if not multi:
        return 0, None
    disagree = sum(len(set().union(*by_type.values())) > 1 for by_type in multi)
    return len(multi), round(disagree / len(multi), 4)


def summarise_pairs(pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    types = Counter(p.user_type if p.user_type is not None else "(none)" for p in pairs)
    known = [p.conflict for p in pairs if p.conflict is not None]
    n_multi, disagreement = label_disagreement(pairs)
    return {
        "rows": len(pairs),
        "user_types": dict(sorted(types.items())),
        "conflict_share": round(sum(known) / len(known), 4) if known else None,
        "comparisons_with_several_types": n_multi,
        "label_disagreement_share": disagreement,
        "preferred_a_share": round(sum(p.preferred == 0 for p in pairs) / len(pairs), 4)
        if pairs
        else None,
        "prompt_words": _length_stats([len(p.prompt.split()) for p in pairs]),
        "response_words": _length_stats(
            [len(r.split()) for p in pairs for r in (p.response_a, p.response_b)]
        ),
    }


def summarise_partition(partition: FederatedPartition) -> dict[str, Any]:
    summary = partition.to_summary()
    for name in ("context", "train", "test"):
        known = [
            p.conflict
            for c in partition.clients
            for p in getattr(c, name)
            if p.conflict is not None
        ]
        summary.setdefault("conflict_share", {})[name] = (
            round(sum(known) / len(known), 4) if known else None
        )
    return summary


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, "-" if value is None else str(value)))
    return rows


def render_summary(summary: Mapping[str, Any], title: str = "summary") -> str:
    """A two-column text table (nested keys joined by dots), for terminals and logs."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("item")
    table.add_column("value", justify="right")
    for name, value in _flatten(summary):
        table.add_row(name, value)
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()
