"""A finished run's files (``final.json``, ``metrics.jsonl``) as entries of a comparison's
results: per-type accuracy, the history of evaluations, the latent means, bytes.

``macro`` is recomputed here as the unweighted mean of the per-type values reported next to it,
so a table cannot disagree with its own columns (``reports.aggregate`` checks this).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedvpa.protocol import run_folder
from fedvpa.protocol.run_folder import finite_or_none
from fedvpa.reports.aggregate import seen_stability

SPLITS = ("seen", "unseen")


def as_count(value: Any) -> int | None:
    """A non-negative integral number as an int (``4.0`` -> 4), else None.

    A count that arrives as a float (a metric passed through a float conversion) is still a
    count; anything fractional, negative or not a number is not one and is dropped.
    """
    number = finite_or_none(value)
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Unweighted mean of the non-null values (None if there are none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def split_final(flat: Mapping[str, Any], split: str, user_types: Sequence[str]) -> dict[str, Any]:
    """``{"per_type", "macro", "conflict", "n"}`` of one split from a flat ``eval/...`` report."""
    per_type = {t: finite_or_none(flat.get(f"eval/{split}/{t}")) for t in user_types}
    conflict_types = [finite_or_none(flat.get(f"eval/conflict/{split}/{t}")) for t in user_types]
    n = finite_or_none(flat.get(f"eval/{split}/n"))
    return {
        "per_type": per_type,
        "macro": mean_or_none(list(per_type.values())),
        "conflict": mean_or_none(conflict_types),
        "n": int(round(n)) if n is not None else 0,
    }


def final_from_eval(
    flat: Mapping[str, Any],
    user_types: Sequence[str],
    bytes_up_per_client_round: float | None = None,
) -> dict[str, Any]:
    """The ``final`` entry of a run from its last flat evaluation report."""
    out: dict[str, Any] = {split: split_final(flat, split, user_types) for split in SPLITS}
    kl = finite_or_none(flat.get("eval/kl"))
    active = finite_or_none(flat.get("eval/active_units"))
    silhouette = finite_or_none(flat.get("eval/silhouette"))
    out["kl"] = max(kl, 0.0) if kl is not None else None  # -1e-9 from float error is 0
    out["active_units"] = active
    out["silhouette"] = min(max(silhouette, -1.0), 1.0) if silhouette is not None else None
    out["bytes_up_per_client_round"] = finite_or_none(bytes_up_per_client_round)
    return out


def history_from_rows(
    rows: Sequence[Mapping[str, Any]], user_types: Sequence[str]
) -> list[dict[str, Any]]:
    """Per evaluated round: macro and per-type accuracy, KL and active units, and the number of
    prototype groups the server used (``num_groups``) where the round's row records one.

    Rows are keyed by round (the last row of a round wins) so a resumed run that replayed a round
    cannot produce a history with a repeated round.
    """
    by_round: dict[int, dict[str, Any]] = {}
    for row in rows:
        flat = row.get("eval")
        if not isinstance(flat, Mapping) or not isinstance(row.get("round"), int):
            continue
        entry: dict[str, Any] = {"round": int(row["round"])}
        for split in SPLITS:
            final = split_final(flat, split, user_types)
            entry[f"{split}_macro"] = final["macro"]
            entry[f"{split}_per_type"] = final["per_type"]
        kl = finite_or_none(flat.get("eval/kl"))
        entry["kl"] = max(kl, 0.0) if kl is not None else None
        entry["active_units"] = finite_or_none(flat.get("eval/active_units"))
        groups = as_count(row.get("num_groups"))
        if groups is not None:  # absent for methods without groups: no null key in their history
            entry["num_groups"] = groups
        by_round[entry["round"]] = entry
    return [by_round[r] for r in sorted(by_round)]


def with_stability(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run with ``final`` completed by its history's end-of-training summary.

    Applied to every run the comparison keeps, fresh or reused from a ``run.json`` written before
    the summary existed, so one report never mixes measured and missing stability by accident.
    """
    return {**run, "final": {**run["final"], **seen_stability(run["history"])}}


def bytes_up_per_client_round(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean bytes one client uploads in a training round: all uploaded bytes / all replies."""
    total = sum(float(r.get("bytes_up", 0) or 0) for r in rows)
    replies = sum(int(r.get("replies", 0) or 0) for r in rows)
    return total / replies if replies else None


def latent_entry(latent: Any, user_types: Sequence[str]) -> dict[str, Any] | None:
    """``final.json["latent"]`` in the results' form, or None when absent or not finite."""
    if not isinstance(latent, Mapping) or not latent.get("mu"):
        return None
    mu = [[finite_or_none(x) for x in row] for row in latent["mu"]]
    if any(x is None for row in mu for x in row):
        return None
    types = [str(t) for t in latent.get("user_type", [])]
    unseen = [bool(u) for u in latent.get("unseen", [])]
    if len(types) != len(mu) or len(unseen) != len(mu) or set(types) - set(user_types):
        return None
    protos = latent.get("prototypes")
    prototypes = None
    if protos:
        prototypes = [[finite_or_none(x) for x in row] for row in protos]
        if any(x is None for row in prototypes for x in row):
            prototypes = None
    out: dict[str, Any] = {"mu": mu, "user_type": types, "unseen": unseen}
    out["prototypes"] = prototypes
    if "client_id" in latent:
        out["client_id"] = [int(c) for c in latent["client_id"]]
    return out


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / run_folder.METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (it is then redone)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def final_if_complete(run_dir: Path, num_rounds: int) -> dict[str, Any] | None:
    """A run folder's ``final.json`` if the run reached ``num_rounds`` or stopped for good
    before it (``dp-max-epsilon``: a resume with the same keys would stop again), else None."""
    final = read_json_or_none(run_dir / run_folder.FINAL_FILE)
    if not isinstance(final, dict):
        return None
    return final if final.get("final_round") == num_rounds or final.get("stopped") else None
