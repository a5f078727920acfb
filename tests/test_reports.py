"""The reporting layer on fabricated, well-formed results: numbers, files, findings, errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedvpa.errors import DataFormatError
from fedvpa.reports import (
    ResultsFormatError,
    compute_findings,
    plot_accuracy_per_round,
    plot_k_curve,
    plot_latents,
    render_table,
    summarise,
    validate_results,
    write_report,
)
from fedvpa.reports.aggregate import last_num_groups, mode_of, seen_stability
from fedvpa.reports.markdown import render_ideal_gap_table, render_report

TYPES = ["harmless", "helpful"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]

# Final seen per-type accuracies per (method, seed); macro is their mean.
SEEN = {
    ("fedavg-bt", 0): (0.62, 0.60),
    ("fedavg-bt", 1): (0.60, 0.58),
    ("fedvpl", 0): (0.72, 0.74),
    ("fedvpl", 1): (0.70, 0.72),
    ("fedvpa-gp", 0): (0.80, 0.84),  # macro 0.82
    ("fedvpa-gp", 1): (0.76, 0.80),  # macro 0.78 -> mean 80.0, sample std 2.8 points
}


def make_run(
    method: str,
    seed: int,
    seen: tuple[float, float],
    *,
    latent: bool = True,
    k_curve: bool = True,
    history: bool = True,
    kl: float | None = 1.5,
    active_units: int | None = 4,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 17 * len(method))
    unseen = (seen[0] - 0.04, seen[1] - 0.06)
    run: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "seconds": 40.0 + seed,
        "user_types": list(TYPES),
        "history": [],
        "final": {
            "seen": {
                "per_type": dict(zip(TYPES, seen, strict=True)),
                "macro": sum(seen) / 2,
                "conflict": seen[0] - 0.1,
                "n": 320,
            },
            "unseen": {
                "per_type": dict(zip(TYPES, unseen, strict=True)),
                "macro": sum(unseen) / 2,
                "conflict": None,
                "n": 80,
            },
            "kl": kl,
            "active_units": active_units,
            "silhouette": 0.4,
            "bytes_up_per_client_round": 12345.0,
        },
    }
    if history:
        macro = sum(seen) / 2
        run["history"] = [
            {
                "round": r,
                "seen_macro": 0.5 + (macro - 0.5) * r / 20,
                "unseen_macro": 0.5 + (macro - 0.55) * r / 20,
                "seen_per_type": {"harmless": 0.6, "helpful": 0.6},
                "kl": 1.0,
                "active_units": 3,
            }
            for r in (5, 10, 15, 20)
        ]
    if latent:
        types = [TYPES[i % 2] for i in range(12)]
        centres = {"harmless": np.array([2.0, 0, 0, 0]), "helpful": np.array([-2.0, 0, 0, 0])}
        mu = [(centres[t] + 0.3 * rng.standard_normal(4)).tolist() for t in types]
        run["latent"] = {
            "mu": mu,
            "user_type": types,
            "unseen": [i >= 9 for i in range(12)],
            "prototypes": [c.tolist() for c in centres.values()] if "gp" in method else None,
        }
    if k_curve:
        run["k_curve"] = {
            "k": [1, 2, 4, 8],
            "unseen_macro": [
                0.5 + (sum(unseen) / 2 - 0.5) * (i + 1) / 4 + 0.01 * seed for i in range(4)
            ],
        }
    return run


def make_results(seen: dict[tuple[str, int], tuple[float, float]] = SEEN, **kw: Any) -> dict:
    return {
        "config": {
            "data": "synthetic-2",
            "num-clients": 20,
            "num-server-rounds": 20,
            "backbone": "minilm",
            "fraction-unseen": 0.2,
        },
        "runs": [make_run(m, s, acc, **kw) for (m, s), acc in seen.items()],
    }


def table_row(text: str, method: str) -> str:
    """The method's row of the main table (the first table of the report)."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
    assert len(rows) == 3, rows  # main table, the unseen-clients table, distance to the ideal
    return rows[0]


def test_summary_mean_and_sample_std_match_hand_computation() -> None:
    s = summarise(make_results())
    stat = s["per_method"]["fedvpa-gp"]["seen_macro"]
    # seeds: 0.82 and 0.78 -> mean 0.80, sample std |0.82 - 0.78| / sqrt(2) = 0.028284
    assert stat["mean"] == pytest.approx(0.80)
    assert stat["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert stat["n"] == 2
    assert stat["std"] == pytest.approx(np.std([0.82, 0.78], ddof=1))
    helpful = s["per_method"]["fedvpl"]["seen_per_type"]["helpful"]
    assert helpful["mean"] == pytest.approx(0.73)
    # unseen conflict is null everywhere: nothing measured, not a zero
    assert s["per_method"]["fedvpl"]["unseen_conflict"] == {"mean": None, "std": None, "n": 0}
    assert s["methods"] == ["fedavg-bt", "fedvpl", "fedvpa-gp"]


def test_report_files_and_table_rows(tmp_path: Path) -> None:
    results = make_results()
    report = write_report(results, tmp_path / "out")
    text = report.read_text()
    row = table_row(text, "fedvpa-gp")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2"  # seeds
    assert cells[2] == "80.0 ± 2.8"  # seen macro, hand-computed above
    assert cells[3:5] == ["–", "–"]  # seen mean / std over the last evals: not recorded here
    assert cells[6] == "78.0 ± 2.8"  # seen harmless: 0.80, 0.76
    assert cells[7] == "82.0 ± 2.8"  # seen helpful: 0.84, 0.80
    assert "fedavg-bt" in text and "fedvpl" in text
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    for name in ("accuracy_per_round.png", "latents.png", "k_curve.png"):
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 5000
        assert f"]({name})" in text
    assert "## Metric definitions" in text and "Var over clients" in text
    assert "- data: `synthetic-2`" in text and "- seeds: 0, 1 (2)" in text


def test_findings_state_the_ordering_and_its_reverse() -> None:
    findings = compute_findings(summarise(make_results()))
    seen = [f for f in findings if "seen macro accuracy by" in f and "unseen" not in f]
    assert any(
        f.startswith("**fedvpa-gp** is ahead of **fedvpl** in seen macro accuracy by 8.0 points")
        and "exceeds the combined std" in f
        for f in seen
    ), findings
    assert any(f.startswith("**fedvpl** is ahead of **fedavg-bt**") for f in seen), findings

    swapped = dict(SEEN)
    swapped[("fedvpa-gp", 0)], swapped[("fedvpl", 0)] = SEEN[("fedvpl", 0)], SEEN[("fedvpa-gp", 0)]
    swapped[("fedvpa-gp", 1)], swapped[("fedvpl", 1)] = SEEN[("fedvpl", 1)], SEEN[("fedvpa-gp", 1)]
    reverse = compute_findings(summarise(make_results(swapped)))
    assert any(
        f.startswith("**fedvpa-gp** is behind **fedvpl** in seen macro accuracy by 8.0 points")
        for f in reverse
    ), reverse


def test_findings_say_when_the_gap_is_within_the_spread() -> None:
    close = dict(SEEN)
    close[("fedvpl", 0)] = (0.84, 0.84)  # fedvpl 0.84, 0.71: mean 77.5, std 9.2; gap 2.5
    findings = compute_findings(summarise(make_results(close)))
    line = next(f for f in findings if f.startswith("**fedvpa-gp** is ahead of **fedvpl** in seen"))
    assert "within the combined std" in line and "not resolved" in line


def test_oracle_gap_best_method_and_collapse() -> None:
    results = make_results()
    oracle = make_run("oracle", 0, (0.90, 0.86), latent=False, k_curve=False, history=False)
    oracle["final"]["kl"] = oracle["final"]["active_units"] = None
    collapsed = make_run("fedvpl+ortho", 0, (0.6, 0.6), kl=0.01, active_units=0)
    unknown = make_run("my-method", 0, (0.55, 0.55))
    results["runs"] += [unknown, collapsed, oracle]
    s = summarise(results)
    assert s["methods"] == [
        "oracle",
        "fedavg-bt",
        "fedvpl",
        "fedvpl+ortho",
        "fedvpa-gp",
        "my-method",
    ]
    findings = compute_findings(s)
    gap = next(f for f in findings if f.startswith("Gap to the oracle (88.0) in seen"))
    assert "fedvpa-gp -8.0" in gap and "fedavg-bt -28.0" in gap
    assert "Best federated method in seen macro accuracy: **fedvpa-gp** (80.0)." in findings
    assert any(f.startswith("Posterior collapse in **fedvpl+ortho**") for f in findings)
    assert not any("Posterior collapse in **fedvpl**" in f for f in findings)
    table = render_table(s)
    assert "| oracle (ref.) | 1 | 88.0 |" in table
    assert table.index("oracle") < table.index("fedavg-bt") < table.index("my-method")


def test_no_collapse_is_stated_when_every_latent_is_alive() -> None:
    findings = compute_findings(summarise(make_results()))
    assert any(f.startswith("No posterior collapse") for f in findings)


def test_single_seed_has_no_std(tmp_path: Path) -> None:
    one = {k: v for k, v in SEEN.items() if k[1] == 0}
    s = summarise(make_results(one))
    assert s["per_method"]["fedvpa-gp"]["seen_macro"]["std"] is None
    assert s["per_method"]["fedvpa-gp"]["seen_macro"]["mean"] == pytest.approx(0.82)
    text = write_report(make_results(one), tmp_path).read_text()
    cells = [c.strip() for c in table_row(text, "fedvpa-gp").strip("|").split("|")]
    assert cells[1:3] == ["1", "82.0"]
    assert "±" not in table_row(text, "fedvpa-gp")
    assert any("single seed" in f for f in compute_findings(s))
    assert (tmp_path / "accuracy_per_round.png").stat().st_size > 0


def test_missing_latent_and_k_curve_are_skipped(tmp_path: Path) -> None:
    results = make_results(latent=False, k_curve=False)
    for run in results["runs"]:  # absent keys as well as nulls
        run.pop("latent", None)
    assert plot_latents(results, tmp_path / "l.png") is None
    assert plot_k_curve(results, tmp_path / "k.png") is None
    assert not (tmp_path / "l.png").exists() and not (tmp_path / "k.png").exists()
    stale = tmp_path / "out" / "latents.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    text = write_report(results, tmp_path / "out").read_text()
    assert not stale.exists()
    assert not (tmp_path / "out" / "k_curve.png").exists()
    assert text.count("Nothing recorded to plot.") == 2
    assert (tmp_path / "out" / "accuracy_per_round.png").exists()


def test_latent_panels_skip_absent_methods_and_honour_seed(tmp_path: Path) -> None:
    results = make_results()
    assert plot_latents(results, tmp_path / "a.png", methods=("nope",)) is None
    assert plot_latents(results, tmp_path / "b.png", methods=("fedvpa-gp",), seed=7) is None
    out = plot_latents(results, tmp_path / "c.png", methods=("nope", "fedvpa-gp"), seed=1)
    assert out == tmp_path / "c.png" and out.read_bytes()[:8] == PNG_MAGIC


def test_references_only_have_no_round_plot(tmp_path: Path) -> None:
    only_refs = make_results({("oracle", 0): (0.9, 0.9)}, history=False)
    assert plot_accuracy_per_round(only_refs, tmp_path / "r.png") is None


def _mutate(path: str, value: Any) -> dict:
    results = copy.deepcopy(make_results())
    target: Any = results
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return results


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("runs", [], "field 'runs': missing, not a list, or empty"),
        ("config", KeyError, "field 'config'"),
        ("runs/0/seed", "0", "runs[0] (fedavg-bt): field 'seed': expected an int"),
        ("runs/1/method", "", "field 'method': expected a non-empty string"),
        ("runs/2/final/seen/macro", 0.5, "is not the unweighted mean of per_type"),
        ("runs/2/final/seen/per_type/helpful", 1.2, "field 'final.seen.per_type.helpful'"),
        ("runs/2/final/seen/per_type/evil", 0.5, "unknown user type 'evil'"),
        ("runs/3/final/unseen", KeyError, "field 'final.unseen': missing"),
        ("runs/3/final/kl", float("nan"), "field 'final.kl': expected a finite number"),
        ("runs/3/user_types", ["helpful", "harmless"], "differs from runs[0]"),
        ("runs/4/latent/unseen", [False], "field 'latent.unseen': expected a list of 12"),
        ("runs/4/latent/mu/3", [0.0, 1.0], "field 'latent.mu[3]': expected 4 values"),
        ("runs/4/latent/prototypes", [[1.0, 2.0]], "field 'latent.prototypes[0]'"),
        ("runs/5/k_curve/k", [1, 4, 2, 8], "k must be strictly increasing"),
        ("runs/5/history/2/round", 5, "rounds must increase"),
        ("runs/5/history/1/num_groups", "4", "field 'history[1].num_groups': expected a non-neg"),
        ("runs/5/history/1/num_groups", True, "field 'history[1].num_groups'"),
        ("runs/5/history/1/num_groups", -1, "field 'history[1].num_groups'"),
        ("runs/5/final/seen_last10_std", 0.3, "disagrees with the last 10 seen_macro values"),
        ("runs/5/final/seen_last10_mean", -0.1, "field 'final.seen_last10_mean': must be >= 0"),
        ("runs/0/final/seen_last10_std", None, "field 'final.seen_last10_std': None disagrees"),
        ("runs/5/seed", 0, "duplicate (method, seed) ('fedvpa-gp', 0)"),
    ],
)
def test_malformed_input_raises_a_precise_error(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    results = _mutate(path, value)
    with pytest.raises(ValueError) as info:
        validate_results(results)
    assert message in str(info.value)
    assert isinstance(info.value, ResultsFormatError | DataFormatError)
    with pytest.raises(ResultsFormatError):
        write_report(results, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_results_must_be_a_dict() -> None:
    with pytest.raises(ValueError, match="expected an object, got list"):
        validate_results([])


@pytest.mark.filterwarnings("error")
def test_collapsed_and_one_dimensional_latents_still_plot(tmp_path: Path) -> None:
    results = make_results()
    for run in results["runs"]:
        if run["method"] == "fedvpl":  # total collapse: every client at the same mean
            run["latent"]["mu"] = [[0.5, 0.5, 0.5, 0.5] for _ in run["latent"]["mu"]]
        if run["method"] == "fedvpa-gp":  # a 1-d latent: a single principal direction
            run["latent"]["mu"] = [[float(i)] for i in range(12)]
            run["latent"]["prototypes"] = [[1.0], [3.0]]
    out = plot_latents(results, tmp_path / "l.png")
    assert out is not None and out.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------ stability, ideal, groups


def seen_history(values: list[float | None], groups: list[int | None] | None = None) -> list:
    """One evaluation per value (rounds 1, 2, ...), with ``num_groups`` where one is given."""
    history = []
    for i, value in enumerate(values):
        entry: dict[str, Any] = {"round": i + 1, "seen_macro": value, "unseen_macro": None}
        if groups is not None and groups[i] is not None:
            entry["num_groups"] = groups[i]
        history.append(entry)
    return history


def headroom_entry(seen: float, unseen: float, k_seen: int = 12, k_unseen: int = 8) -> dict:
    """The part of a ``client_headroom`` entry the report reads, ideal accuracies by k."""
    return {
        "oracle_macro": 0.95,
        "monolithic_macro": 0.6,
        "context_sizes": {"seen": k_seen, "unseen": k_unseen},
        "points": [
            {"k": 0, "macro_accuracy": 0.6, "macro_identified": 0.5},
            {"k": k_unseen, "macro_accuracy": unseen, "macro_identified": 0.97},
            {"k": k_seen, "macro_accuracy": seen, "macro_identified": 0.99},
        ],
    }


def cells_of(table: str, method: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith(f"| {method} |")]
    assert len(rows) == 1, rows
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_seen_stability_is_the_mean_and_sample_std_of_the_last_ten_evaluations() -> None:
    values = np.random.default_rng(5).uniform(0.5, 0.9, size=13).tolist()
    got = seen_stability(seen_history(values))
    assert got["seen_last10_mean"] == pytest.approx(np.mean(values[-10:]))
    assert got["seen_last10_std"] == pytest.approx(np.std(values[-10:], ddof=1))
    # fewer than ten: all of them; nulls are not evaluations of the seen clients
    short = seen_history([0.6, None, 0.7, 0.65])
    got = seen_stability(short)
    assert got["seen_last10_mean"] == pytest.approx(np.mean([0.6, 0.7, 0.65]))
    assert got["seen_last10_std"] == pytest.approx(np.std([0.6, 0.7, 0.65], ddof=1))
    # one evaluation has a mean but no spread; a reference (no history) has neither
    assert seen_stability(seen_history([0.7])) == {"seen_last10_mean": 0.7, "seen_last10_std": None}
    assert seen_stability([]) == {"seen_last10_mean": None, "seen_last10_std": None}


def test_stability_columns_aggregate_the_per_run_values_over_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    series = {0: rng.uniform(0.7, 0.9, 14).tolist(), 1: rng.uniform(0.6, 0.95, 12).tolist()}
    results = make_results()
    for run in results["runs"]:
        if run["method"] == "fedvpa-gp":
            run["history"] = seen_history(series[run["seed"]])
            run["final"].update(seen_stability(run["history"]))
        if run["method"] == "fedvpl" and run["seed"] == 0:  # a single evaluation: no spread
            run["history"] = seen_history([0.73])
            run["final"].update(seen_stability(run["history"]))
    validate_results(results)
    per = summarise(results)["per_method"]
    stds = [np.std(series[s][-10:], ddof=1) for s in (0, 1)]
    means = [np.mean(series[s][-10:]) for s in (0, 1)]
    assert per["fedvpa-gp"]["seen_last10_std"]["mean"] == pytest.approx(np.mean(stds))
    assert per["fedvpa-gp"]["seen_last10_std"]["std"] == pytest.approx(np.std(stds, ddof=1))
    assert per["fedvpa-gp"]["seen_last10_mean"]["mean"] == pytest.approx(np.mean(means))
    assert per["fedvpa-gp"]["seen_last10_mean"]["n"] == 2
    # fedvpl: seed 0 has one evaluation (mean, no std), seed 1 predates the fields (absent)
    assert per["fedvpl"]["seen_last10_mean"] == {"mean": 0.73, "std": None, "n": 1}
    assert per["fedvpl"]["seen_last10_std"] == {"mean": None, "std": None, "n": 0}

    text = write_report(results, tmp_path).read_text()
    cells = cells_of(render_table(summarise(results)), "fedvpa-gp")
    assert cells[3] == f"{100 * np.mean(means):.1f} ± {100 * np.std(means, ddof=1):.1f}"
    assert cells[4] == f"{100 * np.mean(stds):.1f} ± {100 * np.std(stds, ddof=1):.1f}"
    assert cells_of(render_table(summarise(results)), "fedvpl")[3:5] == ["73.0", "–"]
    header = "| method | seeds | seen macro | seen mean, last 10 evals | seen std, last 10 evals |"
    assert header in text
    assert "**Seen mean / std, last 10 evals**" in text
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_distance_to_the_ideal_is_paired_per_seed() -> None:
    results = make_results()
    oracle = make_run("oracle", 0, (0.96, 0.94), latent=False, k_curve=False, history=False)
    results["runs"].append(oracle)
    results["headroom"] = {"0": headroom_entry(0.90, 0.80), "1": headroom_entry(0.88, 0.85)}
    s = summarise(results)
    gp = s["per_method"]["fedvpa-gp"]
    # seed 0: seen 0.90 - 0.82, seed 1: 0.88 - 0.78; unseen finals are 0.77 and 0.73
    assert gp["seen_ideal_gap"]["mean"] == pytest.approx(np.mean([0.08, 0.10]))
    assert gp["seen_ideal_gap"]["std"] == pytest.approx(np.std([0.08, 0.10], ddof=1))
    assert gp["unseen_ideal_gap"]["mean"] == pytest.approx(np.mean([0.03, 0.12]))
    assert s["ideal"]["seen"]["k"] == [12] and s["ideal"]["unseen"]["k"] == [8]
    table = render_ideal_gap_table(s)
    assert "| method | seen: ideal − method (k = 12) | unseen: ideal − method (k = 8) |" in table
    assert cells_of(table, "fedvpa-gp") == ["fedvpa-gp", "+9.0 ± 1.4", "+7.5 ± 6.4"]
    # above the ideal is possible (linear probes): a negative distance, single seed, no spread
    assert cells_of(table, "oracle (ref.)") == ["oracle (ref.)", "-5.0", "-10.0"]
    assert "positive means below the ideal" in table and "can exceed" in table
    assert "not measured" not in table
    # one seed not measured: the distance is over the measured seed only
    results["headroom"]["1"] = {"error": "ConfigError: at least 2 user types"}
    s = summarise(results)
    assert s["per_method"]["fedvpa-gp"]["seen_ideal_gap"]["n"] == 1
    assert cells_of(render_ideal_gap_table(s), "fedvpa-gp")[1] == "+8.0"
    assert s["ideal"]["seen"]["seeds"] == [0]
    assert "Seeds without measured headroom are left out: 1." in render_ideal_gap_table(s)
    # partitions with different context sizes: every k is named
    results["headroom"]["1"] = headroom_entry(0.88, 0.85, k_seen=10)
    assert "seen: ideal − method (k = 10, 12)" in render_ideal_gap_table(summarise(results))


def test_distance_to_the_ideal_without_headroom_is_a_dash() -> None:
    results = make_results()
    for headroom in (None, {}, {"0": {"error": "boom"}}, {"0": {"points": "junk"}}):
        if headroom is not None:
            results["headroom"] = headroom
        s = summarise(results)
        assert s["ideal"]["seen"]["k"] == []
        table = render_ideal_gap_table(s)
        assert cells_of(table, "fedvpa-gp") == ["fedvpa-gp", "–", "–"]
        assert "Headroom was not measured" in table
    # headroom measured at k values other than the partition's: not the ideal asked for
    entry = headroom_entry(0.9, 0.8)
    entry["points"] = entry["points"][:1]
    results["headroom"] = {"0": entry, "1": entry}
    assert cells_of(render_ideal_gap_table(summarise(results)), "fedvpl")[1:] == ["–", "–"]


def test_number_of_groups_is_the_mode_over_seeds_then_each_seed() -> None:
    assert mode_of([4, 4, 3]) == 4 and mode_of([3, 4]) == 3 and mode_of([None, None]) is None
    # the latest evaluation that recorded it
    assert last_num_groups(seen_history([0.6, 0.7, 0.8], [5, 4, None])) == 4
    assert last_num_groups(seen_history([0.6, 0.7])) is None
    seen = {("fedvpa-gp", s): (0.8, 0.8) for s in (0, 1, 2)}
    seen.update({("fedvpl", 0): (0.7, 0.7), ("fedvpl+gp", 0): (0.7, 0.7)})
    seen.update({("fedvpl+ortho", 0): (0.7, 0.7), ("fedvpl+ortho", 3): (0.7, 0.7)})
    results = make_results(seen)
    last = {("fedvpa-gp", 0): 4, ("fedvpa-gp", 1): 4, ("fedvpa-gp", 2): 3, ("fedvpl+gp", 0): 2}
    last[("fedvpl+ortho", 3)] = 5  # seed 0 of fedvpl+ortho never recorded it
    for run in results["runs"]:
        key = (run["method"], run["seed"])
        if key in last:
            run["history"] = seen_history([0.7, 0.8], [6, last[key]])
    validate_results(results)
    per = summarise(results)["per_method"]
    assert per["fedvpa-gp"]["num_groups"] == {"mode": 4, "per_seed": [4, 4, 3]}
    table = render_table(summarise(results))
    assert cells_of(table, "fedvpa-gp")[-2] == "4 (4, 4, 3)"
    assert cells_of(table, "fedvpl+gp")[-2] == "2"  # one seed: the value alone
    assert cells_of(table, "fedvpl+ortho")[-2] == "5 (–, 5)"
    assert cells_of(table, "fedvpl")[-2] == "–"
    assert "| active units | groups | time (s) |" in table


def test_results_without_the_new_fields_still_render(tmp_path: Path) -> None:
    results = make_results()  # no stability, no num_groups, no headroom: an older results.json
    for run in results["runs"]:
        assert "seen_last10_mean" not in run["final"]
    text = write_report(results, tmp_path).read_text()
    cells = [c.strip() for c in table_row(text, "fedvpa-gp").strip("|").split("|")]
    assert cells[3:5] == ["–", "–"] and cells[-2] == "–"
    assert "### Distance to the ideal personalised accuracy" in text


def test_a_stored_report_of_an_earlier_version_renders() -> None:
    # docs/results/synthetic/results.json as an earlier version wrote it: headroom, but no
    # stability fields or group counts (kept here when the stored comparison was re-run)
    path = REPO / "tests" / "data" / "results-before-stability-fields.json"
    results = json.loads(path.read_text())
    summary = summarise(results)
    text = render_report(results, summary, {})
    assert "### Distance to the ideal personalised accuracy" in text
    federated = [m for m in summary["methods"] if not summary["per_method"][m]["reference"]]
    for method in federated:  # headroom was measured there, the stability fields were not
        entry = summary["per_method"][method]
        assert entry["seen_ideal_gap"]["n"] == entry["n_seeds"]
        assert entry["seen_last10_std"]["n"] == 0 and entry["num_groups"]["mode"] is None


def test_a_run_stopped_by_its_privacy_budget_counts_as_finished(tmp_path: Path) -> None:
    # A run that dp-max-epsilon ended early would stop again on --resume with the same keys;
    # `fedvpa run --resume` and `fedvpa compare` must take its final.json, not redo it (by the
    # code, compare would rerun it, see it stop again and fail with "no final.json for N
    # rounds").
    from fedvpa.reports.run_files import final_if_complete

    final = tmp_path / "final.json"
    assert final_if_complete(tmp_path, 4) is None
    final.write_text(json.dumps({"final_round": 2, "stopped": None}))
    assert final_if_complete(tmp_path, 4) is None  # killed, not finished
    final.write_text(json.dumps({"final_round": 2, "stopped": "dp-max-epsilon 1 reached"}))
    assert final_if_complete(tmp_path, 4) == {
        "final_round": 2,
        "stopped": "dp-max-epsilon 1 reached",
    }
    final.write_text(json.dumps({"final_round": 4}))
    assert final_if_complete(tmp_path, 4) == {"final_round": 4}
    final.write_text("[1, 2]")
    assert final_if_complete(tmp_path, 4) is None
