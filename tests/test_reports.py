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

TYPES = ["harmless", "helpful"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

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
    assert len(rows) == 2, rows  # main table, then the unseen-clients table
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
    assert cells[4] == "78.0 ± 2.8"  # seen harmless: 0.80, 0.76
    assert cells[5] == "82.0 ± 2.8"  # seen helpful: 0.84, 0.80
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
