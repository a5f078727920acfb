"""Federated-optimisation candidates, measured in process (same maths as the Flower runtime).

Runs a method's rounds through the round protocol in process (``fedvpa.protocol.in_process``:
the Flower runtime's sampling, seeds and decisions, without its messaging), evaluates every
``--eval-every`` rounds and prints, per (data, setting, seed): final seen / unseen macro
accuracy, conflict accuracy, and the mean and standard deviation of seen accuracy over the last
10 evaluations. It exists to compare settings quickly on the 2-core machine; reported numbers
come from real ``fedvpa compare`` runs on Flower.

    .venv/bin/python benchmarks/fed_sweep.py --config conf/plural-4.toml --method fedvpl \
        --seeds 0 1 --variant base: --variant adam:server-opt=adam,server-lr=0.01 --json s.json
    .venv/bin/python benchmarks/fed_sweep.py --summarise s.json --against base

``--against`` prints each setting's change seed by seed against one of them, with its standard
error: on `plural-4` a final figure moves by 2-3 points from seed to seed for the same setting,
so a one-point change is only visible in paired differences, best of the last-10 mean (README,
"Nine seeds of `plural-4`").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedvpa.config import load_toml
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig, prepare_clients
from fedvpa.federation.registry import create_method
from fedvpa.protocol.in_process import run_in_process
from fedvpa.runner import check_methods


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    return name, overrides


_IDEAL: dict[str, dict[str, float]] = {}


def ideal_accuracy(clients, user_types, seed: int, key: str) -> dict[str, float]:
    """Bayes-optimal personalised accuracy (%) at the seen / unseen clients' k (fedvpa headroom)."""
    if key not in _IDEAL:
        from fedvpa.evaluation.headroom import client_headroom

        entry = client_headroom(clients, user_types, seed)
        by_k = {p["k"]: 100 * p["macro_accuracy"] for p in entry["points"]}
        sizes = entry["context_sizes"]
        _IDEAL[key] = {split: by_k[k] for split, k in sizes.items()}
        _IDEAL[key]["monolithic"] = 100 * entry["monolithic_macro"]
    return _IDEAL[key]


def run_one(flat: dict[str, Any], method_name: str, seed: int, eval_every: int) -> dict[str, Any]:
    """One run through the round protocol in process (the Flower runtime's decisions and seeds,
    without its messaging), evaluated every ``eval_every`` rounds."""
    flat = {**flat, "seed": seed, "eval-every": eval_every}
    exp = ExperimentConfig.from_flat(flat, source="sweep")
    # A variant fixes some keys (fedvpa-gp: use-ortho, prior); a sweep setting one of them
    # would otherwise measure the default under another name. Same check as `fedvpa run`.
    check_methods(replace(exp, federation=replace(exp.federation, method=method_name)))
    prepared = prepare_clients(exp.data, exp.embedding, seed, progress=False)
    clients = prepared.clients
    method = create_method(method_name, exp.method_kwargs(clients[0].context.dim))
    settings = replace(exp.federation, method=method_name)
    t0 = time.perf_counter()
    protocol, _, rows = run_in_process(method, clients, settings)
    history = []
    for row in rows:
        ev = row.get("eval")
        if ev is None:
            continue

        def pct(key: str, ev: dict[str, Any] = ev) -> float | None:
            value = ev.get(key)
            return None if value is None else 100 * value

        history.append(
            {
                "round": row["round"],
                "seen": pct("eval/seen/macro"),
                "unseen": pct("eval/unseen/macro"),
                "conflict": pct("eval/conflict/seen/macro"),
                "groups": row.get("num_groups"),
                "selected": row.get("selected_after_round"),
                "silhouette": ev.get("eval/silhouette"),
            }
        )
    user_types = sorted(
        {c.user_type for c in clients},
        key=lambda t: next(c.type_index for c in clients if c.user_type == t),
    )
    ideal = ideal_accuracy(clients, user_types, seed, prepared.path.name)
    latents = protocol.last_latents or {}
    seen_mu = [
        mu
        for mu, unseen in zip(latents.get("mu", []), latents.get("unseen", []), strict=True)
        if not unseen
    ]
    by_id = {c.client_id: c for c in clients}
    last = history[-10:]
    seen_last = [h["seen"] for h in last]
    return {
        "final": history[-1],
        "last10_mean": statistics.mean(seen_last),
        "last10_std": statistics.pstdev(seen_last) if len(seen_last) > 1 else 0.0,
        "history": history,
        "ideal": ideal,
        "final_mu": seen_mu,
        "final_types": [
            by_id[c].type_index
            for c, unseen in zip(
                latents.get("client_id", []), latents.get("unseen", []), strict=True
            )
            if not unseen
        ],
        "seconds": time.perf_counter() - t0,
        "dp": rows[-1].get("dp"),  # the spend and noise of a private run
    }


def load_rows(paths: list[str]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """A sweep's JSON lines from one or more files, grouped by (data, method, variant); a
    seed measured twice keeps its last line (a re-run replaces, it does not count twice)."""
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read it ({exc.strerror})", path=path) from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (Path(row["config"]).stem, row["method"], row["variant"])
                groups.setdefault(key, {})[int(row["seed"])] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"not a sweep row ({type(exc).__name__}: {exc})", path=path, line=number
                ) from None
    return {key: [by_seed[s] for s in sorted(by_seed)] for key, by_seed in groups.items()}


PAIRED = {
    "seen": lambda r: r["final"]["seen"],
    "unseen": lambda r: r["final"]["unseen"],
    "seen, last 10 evals": lambda r: r["last10_mean"],
}


def paired_differences(
    rows: list[dict[str, Any]], base: list[dict[str, Any]]
) -> tuple[list[int], dict[str, tuple[float, float | None]]]:
    """Per statistic, the mean over the common seeds of (setting - baseline) and its standard
    error (sd of the differences / sqrt(n); None below 2 seeds).

    Why paired: the seeds fix the partition and the test pairs, and both settings are scored on
    the same ones, so most of a final figure's seed-to-seed spread (the binomial noise of a few
    hundred test pairs, about 2.3 points on `plural-4`) cancels in the difference."""
    by_seed = {int(r["seed"]): r for r in base}
    common = [r for r in rows if int(r["seed"]) in by_seed]
    seeds = [int(r["seed"]) for r in common]
    out: dict[str, tuple[float, float | None]] = {}
    for name, get in PAIRED.items():
        diffs = [
            get(r) - get(by_seed[int(r["seed"])])
            for r in common
            if get(r) is not None and get(by_seed[int(r["seed"])]) is not None
        ]
        if not diffs:
            continue
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        out[name] = (statistics.mean(diffs), se)
    return seeds, out


def summarise_against(paths: list[str], baseline: str) -> None:
    """Markdown table: every other setting against ``baseline`` on the seeds both measured."""
    groups = load_rows(paths)
    if not any(variant == baseline for _, _, variant in groups):
        names = ", ".join(sorted({variant for _, _, variant in groups})) or "none"
        raise ConfigError(f"no setting {baseline!r} in the sweep files (settings: {names})")
    print(
        "| data | method | setting | seeds | "
        + " | ".join(f"{name}: change ± se" for name in PAIRED)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(PAIRED))
    for (data, method, variant), rows in sorted(groups.items()):
        base = groups.get((data, method, baseline))
        if variant == baseline or base is None:
            continue
        seeds, diffs = paired_differences(rows, base)
        if not seeds:
            continue
        cells = []
        for name in PAIRED:
            if name not in diffs:
                cells.append("–")
                continue
            mean, se = diffs[name]
            cells.append(f"{mean:+.2f}" + ("" if se is None else f" ± {se:.2f}"))
        print(f"| {data} | {method} | {variant} | {len(seeds)} | " + " | ".join(cells) + " |")


def summarise(paths: list[str]) -> None:
    """Markdown table of a sweep's JSON lines: mean ± std over seeds per (data, method, variant)."""
    groups = load_rows(paths)

    def stat(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        if not vals:
            return "–"
        if len(vals) == 1:
            return f"{vals[0]:.1f}"
        return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"

    print(
        "| data | method | setting | seeds | seen | unseen | conflict (seen) | seen, last 10 evals "
        "| sd of seen over last 10 | ideal seen / unseen | gap seen / unseen | groups |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (data, method, variant), rows in sorted(groups.items()):
        seen = [r["final"]["seen"] for r in rows]
        unseen = [r["final"]["unseen"] for r in rows]
        ideal_s = [r.get("ideal", {}).get("seen") for r in rows]
        ideal_u = [r.get("ideal", {}).get("unseen") for r in rows]
        gap_s = [i - v for i, v in zip(ideal_s, seen, strict=True) if i is not None]
        gap_u = [
            i - v for i, v in zip(ideal_u, unseen, strict=True) if i is not None and v is not None
        ]
        groups_used = [r["final"].get("groups") for r in rows]
        print(
            f"| {data} | {method} | {variant} | {len(rows)} | {stat(seen)} | {stat(unseen)} "
            f"| {stat([r['final']['conflict'] for r in rows])} "
            f"| {stat([r['last10_mean'] for r in rows])} | {stat([r['last10_std'] for r in rows])} "
            f"| {stat(ideal_s)} / {stat(ideal_u)} | {stat(gap_s)} / {stat(gap_u)} "
            f"| {', '.join('–' if g is None else str(g) for g in groups_used)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a conf/*.toml experiment file")
    parser.add_argument(
        "--summarise", nargs="+", default=None, help="print a table of --json files"
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="VARIANT",
        help="with --summarise: each setting's paired change against this one, seed by seed",
    )
    parser.add_argument("--method", default="fedvpl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", default=None, help="name:key=value,...")
    parser.add_argument("--set", action="append", default=[], help="key=value for every variant")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--json", default=None, help="append one JSON line per run here")
    args = parser.parse_args()
    if args.summarise:
        if args.against:
            summarise_against(args.summarise, args.against)
        else:
            summarise(args.summarise)
        return
    if args.against:
        parser.error("--against needs --summarise")
    if not args.config:
        parser.error("--config is required unless --summarise is given")
    torch.set_num_threads(1)
    base = load_toml(args.config)
    for item in args.set:
        key, _, value = item.partition("=")
        base[key] = parse_value(value)
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    for name, overrides in variants:
        for seed in args.seeds:
            flat = {**base, **overrides}
            out = run_one(flat, args.method, seed, args.eval_every)
            f = out["final"]
            curve = " ".join(f"{h['seen']:.0f}" for h in out["history"])
            if out["history"][-1]["silhouette"] is not None:
                curve += " | sil " + " ".join(
                    "-" if h["silhouette"] is None else f"{h['silhouette']:.2f}"
                    for h in out["history"]
                )
            print(
                f"{Path(args.config).stem:12s} {args.method:10s} {name:14s} s{seed} "
                f"seen {f['seen']:.1f} unseen {f['unseen'] or float('nan'):.1f} "
                f"conf {f['conflict'] or float('nan'):.1f} last10 {out['last10_mean']:.1f}"
                f"±{out['last10_std']:.1f} groups {f['groups']} ideal "
                f"{out['ideal'].get('seen', float('nan')):.1f}/"
                f"{out['ideal'].get('unseen', float('nan')):.1f} ({out['seconds']:.0f}s) | {curve}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as fh:
                    row = {"config": args.config, "method": args.method, "variant": name}
                    fh.write(
                        json.dumps({**row, "overrides": overrides, "seed": seed, **out}) + "\n"
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # a bad key or combination: one line, as `fedvpa run` gives it
        print(f"fed_sweep: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
