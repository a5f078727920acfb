"""``report.md`` of a comparison: configuration, tables, computed findings, definitions, figures.

The findings are generated from the numbers by fixed rules (who is ahead, by how much, whether
the gap exceeds the seeds' spread, collapse thresholds), never written by hand, so a report
cannot say more than its own table supports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedvpa.reports.aggregate import (
    COLLAPSE_KL,
    STABILITY_MEAN,
    STABILITY_STD,
    STABILITY_WINDOW,
    Stat,
    mean_std,
    summarise,
    validate_results,
)
from fedvpa.reports.plots import plot_accuracy_per_round, plot_k_curve, plot_latents
from fedvpa.reports.stage2 import render_stage2_section

DASH = "–"
TIE_POINTS = 0.05  # a gap that rounds to 0.0 points is reported as a tie
COMPARISONS: tuple[tuple[str, str], ...] = (("fedvpa-gp", "fedvpl"), ("fedvpl", "fedavg-bt"))
FIGURES: tuple[tuple[str, str], ...] = (
    ("accuracy_per_round.png", "Macro accuracy per round"),
    ("latents.png", "Client posterior means (PCA)"),
    ("k_curve.png", "Unseen-client accuracy vs context size k"),
)

DEFINITIONS_TEMPLATE = """\
- **Macro accuracy**: accuracy computed per user type, then averaged without weights, so a
  majority type cannot hide a neglected one. Every test pair is scored in both A/B orders and the
  two are averaged, so a position bias cannot pass for preference.
- **Seen**: clients that took part in training; their test pairs were held out of training.
- **Unseen**: clients that never trained; their latent z is inferred from their context pairs only,
  then their held-out pairs are scored.
- **Conflict**: accuracy on the pairs on which the user types disagree (synthetic data only; – on
  data without that label). Any non-personalised model scores about 50% there.
- **KL**: mean KL(q(z | C) || prior) of the client posteriors. Near 0 means z carries nothing.
- **Active units**: latent dimensions k with Var over clients of E_q[z_k] > 0.01.
- **Seen mean / std, last {window} evals**: mean and sample std of the seen macro accuracy over
  a run's last {window} evaluations (fewer if it has fewer; the std needs two), then mean ± std
  over seeds. A std of several points means the method swings from round to round, so its final
  round is one draw of that swing; the mean is the steadier summary. – for the references, which
  have no rounds.
- **Groups**: the number of prototype groups the server used in the last round that recorded it
  (latent methods that group clients): the most common value over seeds, then each seed's value
  in seed order. – for methods that do not group clients.
- **mean ± std**: over seeds, sample std (ddof=1); a value without ± comes from a single seed, whose
  spread is unknown. – means not measured for that method.
"""
DEFINITIONS = DEFINITIONS_TEMPLATE.format(window=STABILITY_WINDOW)


def fmt_stat(stat: Stat, *, scale: float = 1.0, decimals: int = 1) -> str:
    """``71.3 ± 1.2``; the mean alone with one seed; a dash when nothing was measured."""
    if stat["mean"] is None:
        return DASH
    mean = f"{scale * stat['mean']:.{decimals}f}"
    if stat["std"] is None:
        return mean
    return f"{mean} ± {scale * stat['std']:.{decimals}f}"


def fmt_pct(stat: Stat) -> str:
    return fmt_stat(stat, scale=100.0, decimals=1)


def fmt_signed_points(stat: Stat) -> str:
    """``+8.3 ± 1.2``: a difference of fractions in points, signed so its direction is explicit."""
    if stat["mean"] is None:
        return DASH
    mean = f"{100.0 * stat['mean']:+.1f}"
    return mean if stat["std"] is None else f"{mean} ± {100.0 * stat['std']:.1f}"


def fmt_groups(groups: Mapping[str, Any]) -> str:
    """``4 (4, 4, 3)``: the mode over seeds, then each seed's value (– where a seed has none).

    A count is not averaged: 3.7 groups describes no run, while the mode and the per-seed values
    show both the typical outcome and any seed that ended with a different grouping.
    """
    if groups["mode"] is None:
        return DASH
    per_seed = groups["per_seed"]
    if len(per_seed) == 1:
        return str(groups["mode"])
    values = ", ".join(DASH if v is None else str(v) for v in per_seed)
    return f"{groups['mode']} ({values})"


def _method_label(method: str, entry: Mapping[str, Any]) -> str:
    return f"{method} (ref.)" if entry["reference"] else method


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_table(summary: Mapping[str, Any]) -> str:
    """The main table (one row per method, accuracies in percent), reusable in the README."""
    types = summary["user_types"]
    window = STABILITY_WINDOW
    header = ["method", "seeds", "seen macro", f"seen mean, last {window} evals"]
    header += [f"seen std, last {window} evals", "unseen macro"]
    header += [f"seen {t}" for t in types]
    header += ["conflict (seen)", "KL", "active units", "groups", "time (s)"]
    rows = []
    for method in summary["methods"]:
        e = summary["per_method"][method]
        row = [_method_label(method, e), str(e["n_seeds"]), fmt_pct(e["seen_macro"])]
        row += [fmt_pct(e[STABILITY_MEAN]), fmt_pct(e[STABILITY_STD])]
        row.append(fmt_pct(e["unseen_macro"]))
        row += [fmt_pct(e["seen_per_type"][t]) for t in types]
        row += [fmt_pct(e["seen_conflict"]), fmt_stat(e["kl"], decimals=2)]
        row += [fmt_stat(e["active_units"]), fmt_groups(e["num_groups"])]
        row.append(fmt_stat(e["seconds"], decimals=1))
        rows.append(row)
    return _markdown_table(header, rows)


def _k_label(ks: Sequence[int]) -> str:
    """`` (k = 12)``; every k when seeds' partitions differ; nothing when not measured."""
    return f" (k = {', '.join(map(str, ks))})" if ks else ""


def render_ideal_gap_table(summary: Mapping[str, Any]) -> str:
    """Per method, how far its final macro accuracy is below the headroom's ideal, in points.

    Paired per seed (each seed's partition has its own ideal), then mean ± std over seeds.
    """
    ideal = summary["ideal"]
    text = (
        "Ideal personalised accuracy (the headroom's Bayes-optimal predictor) minus the method's "
        "final macro accuracy, in points, at the k a seen and an unseen client reads: positive "
        "means below the ideal, and since the ideal is built from linear per-type probes a method "
        "can exceed it (negative)."
    )
    measured = {s for split in ("seen", "unseen") for s in ideal[split]["seeds"]}
    missing = [s for s in summary["seeds"] if s not in measured]
    if not measured:
        text += " Headroom was not measured for this comparison (–)."
    elif missing:
        text += f" Seeds without measured headroom are left out: {', '.join(map(str, missing))}."
    lines = [text + "\n"]
    header = ["method"] + [
        f"{split}: ideal − method{_k_label(ideal[split]['k'])}" for split in ("seen", "unseen")
    ]
    rows = []
    for method in summary["methods"]:
        e = summary["per_method"][method]
        gaps = [fmt_signed_points(e[f"{split}_ideal_gap"]) for split in ("seen", "unseen")]
        rows.append([_method_label(method, e), *gaps])
    lines.append(_markdown_table(header, rows))
    return "\n".join(lines)


def render_unseen_table(summary: Mapping[str, Any]) -> str:
    """Unseen clients per type, plus the latent-quality and communication columns."""
    types = summary["user_types"]
    header = ["method"] + [f"unseen {t}" for t in types]
    header += ["conflict (unseen)", "silhouette", "bytes up / client / round"]
    rows = []
    for method in summary["methods"]:
        e = summary["per_method"][method]
        row = [_method_label(method, e)] + [fmt_pct(e["unseen_per_type"][t]) for t in types]
        row += [fmt_pct(e["unseen_conflict"]), fmt_stat(e["silhouette"], decimals=2)]
        row.append(fmt_stat(e["bytes_up_per_client_round"], decimals=0))
        rows.append(row)
    return _markdown_table(header, rows)


def _compare(summary: Mapping[str, Any], a: str, b: str, metric: str, label: str) -> str | None:
    per = summary["per_method"]
    if a not in per or b not in per:
        return None
    sa, sb = per[a][metric], per[b][metric]
    if sa["mean"] is None or sb["mean"] is None:
        return None
    ma, mb = 100 * sa["mean"], 100 * sb["mean"]
    diff = ma - mb
    values = f"({ma:.1f} vs {mb:.1f})"
    if abs(diff) < TIE_POINTS:
        head = f"**{a}** and **{b}** are level in {label} {values}"
    else:
        where = "ahead of" if diff > 0 else "behind"
        head = f"**{a}** is {where} **{b}** in {label} by {abs(diff):.1f} points {values}"
    if sa["std"] is None or sb["std"] is None:
        return head + "; one of them has a single seed, so there is no spread to judge it against."
    combined = 100 * math.sqrt(sa["std"] ** 2 + sb["std"] ** 2)
    if abs(diff) > combined:
        return head + f"; the gap exceeds the combined std ({combined:.1f} points)."
    return head + f"; the gap is within the combined std ({combined:.1f} points): not resolved."


def _oracle_gaps(summary: Mapping[str, Any], metric: str, label: str) -> str | None:
    per = summary["per_method"]
    if "oracle" not in per or per["oracle"][metric]["mean"] is None:
        return None
    ref = 100 * per["oracle"][metric]["mean"]
    parts = [
        f"{m} {100 * per[m][metric]['mean'] - ref:+.1f}"
        for m in summary["methods"]
        if m != "oracle" and per[m][metric]["mean"] is not None
    ]
    if not parts:
        return None
    return f"Gap to the oracle ({ref:.1f}) in {label}, in points: " + ", ".join(parts) + "."


def _best(summary: Mapping[str, Any], metric: str, label: str) -> str | None:
    per = summary["per_method"]
    scored = [
        (per[m][metric]["mean"], m)
        for m in summary["methods"]
        if not per[m]["reference"] and per[m][metric]["mean"] is not None
    ]
    if not scored:
        return None
    top = max(v for v, _ in scored)
    winners = [m for v, m in scored if 100 * (top - v) < TIE_POINTS]
    names = " and ".join(f"**{m}**" for m in winners)
    return f"Best federated method in {label}: {names} ({100 * top:.1f})."


def _collapse(summary: Mapping[str, Any]) -> list[str]:
    per = summary["per_method"]
    out = []
    for m in summary["methods"]:
        seeds = per[m]["collapsed_seeds"]
        if seeds:
            out.append(
                f"Posterior collapse in **{m}** (KL < {COLLAPSE_KL} or 0 active units) for "
                f"{len(seeds)} of {per[m]['n_seeds']} seeds ({', '.join(map(str, seeds))}): "
                f"KL {fmt_stat(per[m]['kl'], decimals=3)}, "
                f"active units {fmt_stat(per[m]['active_units'])}."
            )
    measured = [m for m in summary["methods"] if per[m]["kl"]["n"] or per[m]["active_units"]["n"]]
    if measured and not out:
        out.append(
            f"No posterior collapse: every run that reports them has KL ≥ {COLLAPSE_KL} and at "
            f"least one active unit ({', '.join(measured)})."
        )
    return out


def compute_findings(summary: Mapping[str, Any]) -> list[str]:
    """Plain statements derived from the summary by fixed rules, in a fixed order."""
    found: list[str | None] = []
    for metric, label in (
        ("seen_macro", "seen macro accuracy"),
        ("unseen_macro", "unseen macro accuracy"),
    ):
        found += [_compare(summary, a, b, metric, label) for a, b in COMPARISONS]
    for metric, label in (
        ("seen_macro", "seen macro accuracy"),
        ("unseen_macro", "unseen macro accuracy"),
    ):
        found.append(_best(summary, metric, label))
        found.append(_oracle_gaps(summary, metric, label))
    found += _collapse(summary)
    return [f for f in found if f is not None]


def _config_section(config: Mapping[str, Any], seeds: Sequence[int]) -> str:
    def get(key: str) -> str:
        value = config.get(key)
        return DASH + " (not recorded)" if value is None else str(value)

    lines = [
        f"- data: `{get('data')}`",
        f"- clients: {get('num-clients')} (fraction unseen: {get('fraction-unseen')}, "
        f"per round: {get('clients-per-round')})",
        f"- rounds: {get('num-server-rounds')}",
        f"- seeds: {', '.join(map(str, seeds))} ({len(seeds)})",
        f"- backbone: `{get('backbone')}`",
    ]
    rows = [[f"`{k}`", f"`{json.dumps(v)}`"] for k, v in sorted(config.items())]
    full = _markdown_table(["key", "value"], rows) if rows else "(empty)\n"
    return (
        "\n".join(lines)
        + "\n\n<details><summary>Full configuration</summary>\n\n"
        + full
        + "\n</details>\n"
    )


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def _settings_section(runs: Sequence[Mapping[str, Any]]) -> str:
    """Every method's effective settings (defaults filled in), one column per method, so a
    report says what ran even after the package's defaults change."""
    by_method: dict[str, dict[str, Any]] = {}
    for run in runs:
        if isinstance(run.get("settings"), Mapping) and run["method"] not in by_method:
            by_method[run["method"]] = _flatten("", run["settings"])
    if not by_method:
        return ""
    methods = list(by_method)
    keys = sorted({k for flat in by_method.values() for k in flat})
    rows = [
        [f"`{k}`"]
        + [DASH if k not in by_method[m] else f"`{json.dumps(by_method[m][k])}`" for m in methods]
        for k in keys
    ]
    return (
        "<details><summary>Method settings (defaults filled in)</summary>\n\n"
        + _markdown_table(["setting", *methods], rows)
        + "\n</details>\n"
    )


def _point_at(entry: Mapping[str, Any], k: int) -> Mapping[str, Any] | None:
    return next((p for p in entry.get("points", []) if p.get("k") == k), None)


def render_headroom_section(headroom: Mapping[str, Any]) -> str:
    """What the data allows: probe accuracies and the ideal personalised predictor, per group.

    ``headroom`` maps a seed to ``fedvpa.evaluation.headroom.client_headroom``'s dict, or to
    ``{"error": ...}`` where it could not be measured.
    """
    measured = {s: e for s, e in headroom.items() if isinstance(e, Mapping) and "error" not in e}
    lines = [
        "Linear probes on `emb(A) - emb(B)` (cross-fitted), and the Bayes-optimal personalised "
        "predictor that knows the per-type probes and infers the type from the k labelled pairs "
        "a client's posterior reads (`fedvpa headroom`). It estimates how much inferring the type "
        "from a client's own labels can add over a monolithic model with these features: an "
        "estimate from linear probes, not a bound (a nonlinear selector may do a little better).\n",
    ]
    for seed, entry in sorted(headroom.items(), key=lambda kv: (len(kv[0]), kv[0])):  # 2 < 10
        if seed not in measured:
            lines.append(f"- seed {seed}: not measured ({entry.get('error', 'malformed')}).")
    if not measured:
        return "\n".join(lines) + "\n"
    entries = list(measured.values())
    rows = [
        ["per-type probes (macro)", DASH, fmt_pct(mean_std([e["oracle_macro"] for e in entries]))],
        [
            "monolithic probe (macro)",
            DASH,
            fmt_pct(mean_std([e["monolithic_macro"] for e in entries])),
        ],
    ]
    gains = []
    for group in ("seen", "unseen"):
        ks = {e.get("context_sizes", {}).get(group) for e in entries}
        if len(ks) != 1 or None in ks:
            continue
        k = int(next(iter(ks)))  # type: ignore[arg-type]
        found = [_point_at(e, k) for e in entries]
        points = [p for p in found if p is not None]
        if len(points) != len(entries):
            continue
        acc = mean_std([p["macro_accuracy"] for p in points])
        ident = mean_std([p["macro_identified"] for p in points])
        gain = mean_std(
            [
                p["macro_accuracy"] - e["monolithic_macro"]
                for p, e in zip(points, entries, strict=True)
            ]
        )
        rows.append(
            [f"ideal personalised, {group} clients (k = {k})", fmt_pct(ident), fmt_pct(acc)]
        )
        gains.append(f"{fmt_stat(gain, scale=100.0)} points at k = {k} ({group})")
    lines.append(_markdown_table(["", "type identified", "accuracy"], rows))
    if gains:
        lines.append("Ideal personalised gain over the monolithic probe: " + "; ".join(gains) + ".")
    return "\n".join(lines) + "\n"


def render_report(
    results: Mapping[str, Any], summary: Mapping[str, Any], figures: Mapping[str, Path | None]
) -> str:
    """The text of report.md; ``figures`` maps each file name in FIGURES to its path or None."""
    parts = [
        "# FedVPA comparison report\n",
        "## Configuration\n",
        _config_section(results["config"], summary["seeds"]),
        _settings_section(results["runs"]),
        "## Results\n",
        "Accuracies in percent, mean ± std over seeds. (ref.) marks the references, which see "
        "pooled data and are not federated.\n",
        render_table(summary),
        "\n### Unseen clients, latent and communication\n",
        render_unseen_table(summary),
        "\n### Distance to the ideal personalised accuracy\n",
        render_ideal_gap_table(summary),
        "\n## Findings\n",
    ]
    findings = compute_findings(summary)
    parts.append("\n".join(f"- {f}" for f in findings) + "\n" if findings else "- (none)\n")
    if results.get("headroom"):
        parts += ["\n## Personalisation headroom (what the data allows)\n"]
        parts.append(render_headroom_section(results["headroom"]))
    stage2 = render_stage2_section(results.get("stage2") or {})
    if stage2:
        parts += ["\n## Stage 2: the aligned policy, best-of-n and FedDPO\n", stage2]
    parts += ["\n## Metric definitions\n", DEFINITIONS, "\n## Figures\n"]
    for name, caption in FIGURES:
        if figures.get(name) is not None:
            parts.append(f"### {caption}\n\n![{caption}]({name})\n")
        else:
            parts.append(f"### {caption}\n\nNothing recorded to plot.\n")
    return "\n".join(parts)


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write results.json, the figures and report.md into ``out_dir``; returns report.md's path.

    The input is validated before anything is written, so a malformed dict leaves no half report.
    A figure with nothing to plot is deleted if an earlier report left one of that name.
    """
    validate_results(results)
    summary = summarise(results)
    text = json.dumps(results, indent=2, allow_nan=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(text + "\n", encoding="utf-8")
    drawers = {
        "accuracy_per_round.png": plot_accuracy_per_round,
        "latents.png": plot_latents,
        "k_curve.png": plot_k_curve,
    }
    figures: dict[str, Path | None] = {}
    for name, draw in drawers.items():
        figures[name] = draw(results, out / name)
        if figures[name] is None:
            (out / name).unlink(missing_ok=True)
    report = out / "report.md"
    report.write_text(render_report(results, summary, figures), encoding="utf-8")
    return report
