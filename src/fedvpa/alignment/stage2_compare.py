"""``fedvpa compare --stage2``: stage 2 on every seed's run of the latent methods of a comparison.

Stage 2 is the expensive half (minutes per seed on a GPU, about a quarter of an hour on the
2-core CPU machine), so it runs after every stage-1 run is finished and saved, one ``fedvpa
align`` per (method, seed) in that run's own folder (``OUT/runs/<method>-seed<s>/align``). Each
is resumed, never redone: align's per-step fingerprints decide what a changed option redoes, and a
killed comparison continues where it stopped. What the comparison keeps is a summary of each
``report.json`` (``results["stage2"]``); ``fedvpa.reports.stage2`` renders it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fedvpa.alignment.align import check_policy_and_prompts, run_align
from fedvpa.alignment.options import AlignOptions, resolve_options
from fedvpa.errors import ConfigError

DEFAULT_STAGE2_METHODS = ("fedvpa-gp",)
LATENT_METHODS = ("fedvpa-gp", "fedvpl", "fedvpl+gp")  # the methods with a z to align with
SUMMARY_KEYS = (
    "groups",
    "baselines",
    "eval_prompts",
    "win_rate_vs_base",
    "switching",
    "switching_best_of_n",
    "against_baseline",
    "best_of_n",
    "note",  # the proxy note, naming where the judges' pairs came from
)


def check_stage2(
    methods: Sequence[str], compared: Sequence[str], opts: AlignOptions
) -> AlignOptions:
    """Refuse what would only fail after the stage-1 runs (hours): a method without ``z``, one
    the comparison does not run, a bad align option or policy path. Returns the resolved options."""
    if not methods:
        raise ConfigError("name at least one method", field="--stage2-methods")
    for name in methods:
        if name not in LATENT_METHODS:
            raise ConfigError(
                f"{name!r} has no latent z to align with; choose from {', '.join(LATENT_METHODS)}",
                field="--stage2-methods",
            )
        if name not in compared:
            raise ConfigError(
                f"{name!r} is not one of the compared methods ({', '.join(compared)})",
                field="--stage2-methods",
            )
    resolved = resolve_options(opts)
    check_policy_and_prompts(opts, prefix="--stage2-")
    return resolved


def summarise_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the comparison keeps of one align ``report.json``."""
    out = {k: report.get(k) for k in SUMMARY_KEYS}
    out["judges"] = {k: v["heldout_accuracy"] for k, v in report["judges"].items()}
    behaviour = report["behaviour"]
    out["refusal_rate"] = behaviour["refusal_rate"]
    out["mean_words"] = behaviour["mean_words"]
    out["refusal_difference"] = behaviour["refusal_difference"]
    out["step_seconds"] = report.get("step_seconds", {})
    return out


def run_stage2(
    results: dict[str, Any],
    opts: AlignOptions,
    methods: Sequence[str],
    save: Callable[[dict[str, Any]], object],
    say: Callable[[str], None] | None = None,
) -> None:
    """``fedvpa align`` (resumed) on each finished run of ``methods`` in ``results``, with the
    run's seed as align's own seed; the summaries
    go to ``results["stage2"]`` and ``save(results)`` runs after each, so a failure or a kill
    loses nothing finished. A failing seed is recorded in ``results["failures"]``."""
    stage2 = results.setdefault("stage2", {})
    stage2["options"] = json.loads(json.dumps(asdict(opts), default=str))
    entries: list[dict[str, Any]] = list(stage2.get("runs", []))
    todo = sorted(
        (r for r in results["runs"] if r["method"] in methods and r.get("run_dir")),
        key=lambda r: (methods.index(r["method"]), r["seed"]),
    )
    for run in todo:
        method, seed, run_dir = run["method"], int(run["seed"]), Path(run["run_dir"])
        prefix = f"[compare] seed {seed} | {method} | stage 2"

        def log(line: str, prefix: str = prefix) -> None:
            if say:
                say(f"{prefix} {line}")

        if say:
            say(f"{prefix} | align in {run_dir / 'align'}")
        t0 = time.perf_counter()
        try:
            folder = run_align(
                run_dir,
                replace(opts, seed=seed),  # each seed's own sampling and DPO seeds
                resume=True,
                log=log,
            )
            report = json.loads((folder / "report.json").read_text())
            entry = {
                "method": method,
                "seed": seed,
                "align_dir": str(folder),
                "seconds": round(time.perf_counter() - t0, 1),
                **summarise_report(report),
            }
        except Exception as exc:  # one failing seed must not lose the others
            results["failures"].append(
                {
                    "method": f"{method} (stage 2)",
                    "seed": seed,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            if say:
                say(f"{prefix} | FAILED: {type(exc).__name__}: {exc}")
            save(results)
            continue
        entries = [e for e in entries if (e["method"], e["seed"]) != (method, seed)] + [entry]
        stage2["runs"] = entries
        save(results)
        if say:
            say(f"{prefix} | {describe(entry)}")
    stage2["runs"] = entries
    save(results)


def describe(entry: Mapping[str, Any]) -> str:
    """One line: each judge's switching difference of the aligned policy, with its CI."""
    parts = []
    for s in entry.get("switching") or []:
        parts.append(
            f"{s['judge']} judge: z_{s['z']} - z_{s['against_z']} {100 * s['estimate']:+.1f} "
            f"[{100 * s['low']:+.1f}, {100 * s['high']:+.1f}]"
        )
    return "; ".join(parts) or "no judge named like a group"
