"""``fedvpa run``: prepare the data once, run the method and its baseline on Flower, summarise.

The experiment folder holds ``config.json`` (every key and the seed), one Flower run folder per
method (``metrics.jsonl``, checkpoints, ``final.json``) and ``summary.json``. Each method's run is
resumable on its own, so a killed experiment loses at most the round in flight.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedvpa.errors import ConfigError
from fedvpa.experiment import (
    ExperimentConfig,
    check_clients_per_round,
    check_privacy_budget,
    prepare_clients,
)
from fedvpa.protocol import run_folder
from fedvpa.reports.run_files import final_if_complete

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


def load_run_config(run_dir: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The configuration an experiment folder was started with (for ``--resume``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError("not an experiment folder (no config.json)", path=str(run_dir))
    try:
        recorded = json.loads(path.read_text())
        flat = dict(recorded["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable experiment config ({exc})", path=str(path)) from exc
    flat["seed"] = recorded.get("seed", flat.get("seed", 0))
    exp = ExperimentConfig.from_flat(flat, source=str(path))
    explicit = recorded.get("explicit")
    if isinstance(explicit, list):
        exp = replace(exp, explicit=frozenset(str(k) for k in explicit))
    return exp, flat


def _versions() -> dict[str, str]:
    """What the numbers of a run depend on besides its config: the libraries whose arithmetic it
    uses and the CPU's vector instructions (torch picks kernels by them, and the rounding of
    different kernels can move a 50-round run by a point, or flip a near-tied group count)."""
    import flwr
    import numpy
    import scipy
    import sklearn
    import torch

    import fedvpa

    return {
        "fedvpa": fedvpa.__version__,
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


def method_results(final: dict[str, Any]) -> dict[str, Any]:
    """Per-type accuracy (seen / unseen) and diagnostics from a Flower run's ``final.json``."""
    ev = final.get("eval", {})
    out: dict[str, Any] = {"seen": {}, "unseen": {}}
    for key, value in ev.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[1] in ("seen", "unseen"):
            out[parts[1]][parts[2]] = value
        elif (
            len(parts) == 4 and parts[:2] == ["eval", "conflict"] and parts[2] in ("seen", "unseen")
        ):
            out.setdefault("conflict", {}).setdefault(parts[2], {})[parts[3]] = value
    for name in ("kl", "active_units", "silhouette"):
        out[name] = ev.get(f"eval/{name}")
    out["rounds"] = final.get("final_round")
    out["bytes_up_total"] = final.get("bytes_up_total")
    out["bytes_down_total"] = final.get("bytes_down_total")
    out["failures_total"] = final.get("failures_total")
    return out


def check_methods(exp: ExperimentConfig) -> None:
    """Both methods known, and none silently overriding a setting the user gave.

    A built-in variant fixes some model settings (``fedvpl`` has ``prior = "standard"``); a
    user who also sets ``prior = "mixture"`` would otherwise get the variant's value without a
    word. Runs before any folder is written or any training starts.
    """
    from fedvpa.federation.registry import create_method, resolve_factory

    given = exp.user_model_settings()
    names = (("method", exp.federation.method), ("baseline", exp.federation.baseline))
    for key, name in names:
        if not name:
            continue
        try:
            resolve_factory(name)
        except ConfigError as exc:
            raise ConfigError(exc.reason, field=key) from exc
        if key == "baseline" or not given:
            continue
        effective = create_method(name, exp.method_kwargs(exp.model.input_dim)).effective_config()
        used = {**effective.get("model", {}), **effective.get("local", {})}
        for field_name, value in given.items():
            if field_name in used and used[field_name] != value:
                raise ConfigError(
                    f"{name} fixes {field_name.replace('_', '-')} = {used[field_name]!r} "
                    f"(given: {value!r}); choose the method that has it",
                    field=field_name.replace("_", "-"),
                )


def secure_settings(
    exp: ExperimentConfig, method: str, data_path: Path | None, input_dim: int
) -> Any:
    """The SecAgg+ run of ``method`` (``secure-aggregation = true``); refuses, with one line
    naming the key, a method that sends more than its weights and what DP cannot cover.

    Without ``data_path`` (before the data are prepared) only what needs no data is checked.
    With it, DP is resolved by the main path's own guard (``ClientLevelDP``: the same refusals
    and the same noise multiplier for ``dp-epsilon``) and a ``dp-max-epsilon`` that not even
    round 1 fits is refused, so that a run folder is never written for it."""
    from fedvpa.federation.registry import create_method
    from fedvpa.federation.secure_aggregation import SecureSettings, privacy_plan, seen_clients
    from fedvpa.privacy.guard import ClientLevelDP, check_method

    fed = exp.federation
    role = "method" if method == fed.method else "baseline"
    noise, num_seen = 0.0, 0
    try:
        settings = SecureSettings(
            method,
            exp.method_kwargs(input_dim),
            str(data_path or ""),
            num_rounds=fed.num_server_rounds,
            clients_per_round=fed.clients_per_round,
            seed=fed.seed,
        )
        if fed.dp_enabled:
            created = create_method(method, settings.method_kwargs)
            if data_path is None:
                check_method(created, fed)
            else:
                num_seen = len(seen_clients(str(data_path)))
                noise = ClientLevelDP(created, fed, num_seen).noise_multiplier
    except ConfigError as exc:
        raise ConfigError(
            f"secure-aggregation: {exc.reason}",
            field=role if exc.field == "method" else exc.field,  # the key to change
        ) from exc
    settings = replace(
        settings,
        dp_noise_multiplier=noise,
        dp_clip_norm=fed.dp_clip_norm,
        dp_delta=fed.dp_delta,
        dp_max_epsilon=fed.dp_max_epsilon,
        dp_noise_source=fed.dp_noise_source,
    )
    if num_seen:
        rounds, _, stopped = privacy_plan(settings, num_seen)
        if rounds < 1:
            raise ConfigError(
                f"secure-aggregation: {stopped}: not even one round fits; raise "
                "dp-max-epsilon or the noise",
                field="dp-max-epsilon",
            )
    return settings


def print_method_notes(exp: ExperimentConfig, names: Sequence[str], input_dim: int) -> None:
    """One stderr line per method whose settings will not do what they seem to: DP that would
    leave it near chance (``encoder_advice``) or skip its group census (``census_note``),
    ``batched-clients`` it cannot use (``batching_note``)."""
    from fedvpa.federation.registry import create_method
    from fedvpa.privacy.guard import census_note, encoder_advice

    for name in dict.fromkeys(names):
        method = create_method(name, exp.method_kwargs(input_dim))
        notes = [method.batching_note()]
        if exp.federation.dp_enabled:
            notes += [encoder_advice(method), census_note(method)]
        for note in notes:
            if note:
                print(f"fedvpa: {note}", file=sys.stderr)


def run_experiment(
    exp: ExperimentConfig, out: Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run ``exp.federation.method`` (and its baseline) on the same prepared clients.

    Everything that can be checked is checked before the folder is written: the keys (when
    ``exp`` was built), the methods, and the partition (data preparation writes only to the
    embedding cache).
    """
    from fedvpa.federation.run_config import FederationConfig
    from fedvpa.federation.runtime import run_federated

    out = Path(out)
    if not resume and (out / CONFIG_FILE).exists():
        raise ConfigError(
            "experiment folder already exists: pass --resume to continue it, or choose --out",
            path=str(out),
        )
    if not resume:
        check_methods(exp)
    fed = exp.federation
    if fed.secure_aggregation:
        for name in (fed.method, fed.baseline):
            if name:
                secure_settings(exp, name, None, exp.model.input_dim)  # before the data
    seed = exp.federation.seed
    t0 = time.perf_counter()
    prepared = prepare_clients(exp.data, exp.embedding, seed, progress=progress)
    prep_seconds = time.perf_counter() - t0
    check_clients_per_round(exp, prepared.clients)
    check_privacy_budget(exp, [n for n in (fed.method, fed.baseline) if n], prepared.clients)
    if progress:
        names = [n for n in (fed.method, fed.baseline) if n]
        print_method_notes(exp, names, prepared.clients[0].context.dim)
        if prepared.partition.config.get("partition") == "users":
            dropped = int(prepared.partition.config.get("users_dropped", 0))
            print(
                f"fedvpa: partition: one client per user of the data ({len(prepared.clients)} "
                f"users{f', {dropped} with fewer than 3 pairs left out' if dropped else ''}; "
                "num-clients and pairs-per-client do not apply; --set partition=types deals "
                "from type pools instead)",
                file=sys.stderr,
            )
    secure = {  # with the data: DP resolved, an impossible budget refused before the folder
        name: secure_settings(exp, name, prepared.path, prepared.clients[0].context.dim)
        for name in (fed.method, fed.baseline)
        if name and fed.secure_aggregation
    }
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        run_folder.write_json(
            out / CONFIG_FILE,
            {
                "config": exp.to_flat(),
                "explicit": sorted(exp.explicit),
                "seed": seed,
                "versions": _versions(),
            },
        )
    fed = exp.federation
    methods = [fed.method] + ([fed.baseline] if fed.baseline and fed.baseline != fed.method else [])
    results: dict[str, Any] = {
        "seed": seed,
        "out": str(out),
        "data": exp.data.data,
        "num_clients": len(prepared.clients),
        "user_types": list(prepared.partition.user_types),
        "prepare_seconds": round(prep_seconds, 1),
        "methods": {},
    }
    for name in methods:
        run_dir = out / name
        if fed.secure_aggregation and final_if_complete(run_dir, fed.num_server_rounds) is None:
            # SecAgg+ keeps no checkpoint: a resumed run redoes an unfinished method from round 1
            from fedvpa.federation.secure_aggregation import run_secure_method

            t = time.perf_counter()
            run_secure_method(
                secure[name],
                prepared.clients,
                run_dir,
                log=print if progress else lambda _: None,
            )
            seconds = time.perf_counter() - t
        elif final_if_complete(run_dir, fed.num_server_rounds) is None:
            t = time.perf_counter()
            run_federated(
                FederationConfig.from_experiment(
                    exp,
                    method=name,
                    input_dim=prepared.clients[0].context.dim,
                    data_path=prepared.path,
                    run_dir=run_dir,
                    num_clients=len(prepared.clients),
                    resume=resume and run_folder.checkpoint_path(run_dir).exists(),
                )
            )
            seconds = time.perf_counter() - t
        else:
            seconds = None
        final = json.loads((run_dir / run_folder.FINAL_FILE).read_text())
        results["methods"][name] = {**method_results(final), "seconds": seconds}
        run_folder.write_json(out / SUMMARY_FILE, results)  # after each method: nothing is lost
    return results


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def print_run_summary(results: dict[str, Any]) -> str:
    """A plain-text table: per-type accuracy of each method for seen and unseen clients."""
    types = results["user_types"]
    head = ["method", "clients"] + types + ["macro", "conflict", "KL", "active", "time"]
    rows = []
    for name, res in results["methods"].items():
        for group in ("seen", "unseen"):
            acc = res.get(group, {})
            conflict = res.get("conflict", {}).get(group, {}).get("macro")
            rows.append(
                [name, group]
                + [_pct(acc.get(t)) for t in types]
                + [
                    _pct(acc.get("macro")),
                    _pct(conflict),
                    "-" if res.get("kl") is None else f"{res['kl']:.2f}",
                    "-" if res.get("active_units") is None else f"{res['active_units']:.0f}",
                    "-" if res.get("seconds") is None else f"{res['seconds']:.0f}s",
                ]
            )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        f"\nAccuracy in % on held-out test pairs (both A/B orders), {results['num_clients']} "
        f"clients, data {results['data']}, seed {results['seed']}. Run folder: {results['out']}"
    )
    return "\n".join(lines)
