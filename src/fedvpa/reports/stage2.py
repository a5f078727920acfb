"""The stage-2 section of a comparison's ``report.md`` (``fedvpa compare --stage2``).

Pure rendering of ``results["stage2"]`` (written by ``fedvpa.alignment.stage2_compare``): win
rates against the base policy as mean ± std over seeds, and the switching effects with how many
seeds' own 95 % intervals exclude 0, so that one lucky seed cannot pass for a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedvpa.reports.aggregate import mean_std

BEST_OF_N = "bon:"  # the variant prefix of fedvpa.alignment.align.BEST_OF_N
PROXY_NOTE = (  # when a summary predates the per-run note
    "The judges are **proxies**: per user type, a Bradley-Terry model on sentence embeddings, "
    "trained on labelled pairs that neither the selector nor the policy saw. They say whether a "
    "reply resembles what that user type preferred, not whether it is good."
)


def variant_label(variant: str, groups: Sequence[str]) -> str:
    if variant in groups:
        return f"aligned, z_{variant}"
    if variant.startswith(BEST_OF_N):
        return f"best-of-n, z_{variant[len(BEST_OF_N) :]}"
    return "FedDPO (no z)" if variant == "feddpo" else variant


def _pct(values: Sequence[float | None]) -> str:
    stat = mean_std([None if v is None else 100 * v for v in values])
    if stat["mean"] is None:
        return "–"
    if stat["std"] is None:
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _seeds(entries: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(str(e["seed"]) for e in entries)


def _switching_rows(
    method: str, entries: Sequence[Mapping[str, Any]], key: str, policy: str
) -> list[str]:
    rows: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        for s in e.get(key) or []:
            rows.setdefault((s["judge"], s["z"], s["against_z"]), []).append(s)
    out = []
    for (judge, z, other), found in rows.items():
        per_seed = "; ".join(
            f"{100 * s['estimate']:+.1f} [{100 * s['low']:+.1f}, {100 * s['high']:+.1f}]"
            for s in found
        )
        excl = sum(bool(s["excludes_zero"]) and s["estimate"] > 0 for s in found)
        out.append(
            f"| {method} | {judge} | {policy} | z_{z} minus z_{other} | "
            f"{_pct([s['estimate'] for s in found])} | {per_seed} | {excl} of {len(found)} |"
        )
    return out


def render_stage2_section(stage2: Mapping[str, Any]) -> str:
    """Markdown for ``results["stage2"]``; empty when no stage-2 run finished."""
    entries: list[Mapping[str, Any]] = list(stage2.get("runs") or [])
    if not entries:
        return ""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for e in sorted(entries, key=lambda e: (e["method"], e["seed"])):
        by_method.setdefault(e["method"], []).append(e)
    opts = stage2.get("options", {})
    profile = "quick" if opts.get("quick") else "full"
    notes = sorted({str(e["note"]) for e in entries if e.get("note")}) or [PROXY_NOTE]
    lines = [
        f"Stage 2 (`fedvpa align`, {profile} profile, policy "
        f"`{opts.get('policy') or 'SmolLM2-135M-Instruct'}`) on each seed's run; each seed's "
        "align folder holds its own report. " + " ".join(notes),
        "",
        "Win rate against the base policy (%, both reply orders), mean ± std over seeds:",
        "",
    ]
    for method, found in by_method.items():
        groups = list(found[0]["groups"])
        variants: list[str] = []
        for e in found:
            for judge_rates in e["win_rate_vs_base"].values():
                variants += [v for v in judge_rates if v not in variants]
        header = ["method", "judge (held-out acc.)", "seeds"] + [
            variant_label(v, groups) for v in variants
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for judge in found[0]["win_rate_vs_base"]:
            acc = _pct([e["judges"].get(judge) for e in found])
            cells = [
                _pct([e["win_rate_vs_base"][judge].get(v, {}).get("estimate") for e in found])
                for v in variants
            ]
            row = [method, f"{judge} ({acc})", _seeds(found), *cells]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Switching: under judge J, the win rate with z_J minus with another group's z "
        "(percentage points; each seed's paired-bootstrap 95 % interval; the last column counts "
        "the seeds whose interval is above 0):",
        "",
        "| method | judge | policy | difference | mean ± std | per seed | above 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, found in by_method.items():
        lines += _switching_rows(method, found, "switching", "aligned")
        lines += _switching_rows(method, found, "switching_best_of_n", "best-of-n")
    lines += [
        "",
        "Readable behaviour: refusal rate on risky prompts and mean reply length in words, "
        "mean ± std over seeds:",
        "",
        "| method | policy | refusal rate (%) | mean words |",
        "|---|---|---|---|",
    ]
    for method, found in by_method.items():
        groups = list(found[0]["groups"])
        for v in found[0]["refusal_rate"]:
            refusal = _pct([e["refusal_rate"].get(v, {}).get("estimate") for e in found])
            words = mean_std([e["mean_words"].get(v, {}).get("estimate") for e in found])
            w = "–" if words["mean"] is None else f"{words['mean']:.1f}"
            lines.append(f"| {method} | {variant_label(v, groups)} | {refusal} | {w} |")
    return "\n".join(lines) + "\n"
