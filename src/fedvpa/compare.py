"""``fedvpa compare``: every method on the same clients, backbone, rounds and seeds.

A comparison is only fair when nothing but the method changes, so each seed prepares its clients
once and every method (the pooled-data references and the federated methods on Flower) reads those
same tensors. The output folder holds one run folder per (method, seed) under ``runs/``, plus
``results.json`` and ``report.md`` (see ``fedvpa.reports``), both rewritten after each (method,
seed) so a killed comparison loses at most the run in flight.

Resuming is per run: a ``run.json`` whose fingerprint (configuration, seed, method, k values and
the client tensors themselves) matches is reused as is; a federated run folder with a complete
``final.json`` is re-read without training; one with only a checkpoint is resumed by Flower.

Everything written into the results dict is a plain JSON value. The k-curve lives in
``evaluation/k_curve.py`` and the reading of run files in ``reports/run_files.py``; this module
runs things.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError
from fedvpa.evaluation.k_curve import k_curve
from fedvpa.experiment import ExperimentConfig
from fedvpa.methods.base import Predictor
from fedvpa.model.config import ModelConfig
from fedvpa.protocol import run_folder
from fedvpa.protocol.run_folder import finite_or_none
from fedvpa.reports.aggregate import METHOD_ORDER, ResultsFormatError, validate_results
from fedvpa.reports.run_files import (
    bytes_up_per_client_round,
    final_from_eval,
    final_if_complete,
    history_from_rows,
    latent_entry,
    read_json_or_none,
    read_rows,
    with_stability,
)

REFERENCES: tuple[str, ...] = ("oracle", "centralised-vpl")
DEFAULT_METHODS: tuple[str, ...] = METHOD_ORDER
DEFAULT_K_VALUES: tuple[int, ...] = (1, 2, 4, 8)
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"

Say = Callable[[str], None]


def user_types_of(clients: Sequence[ClientTensors]) -> list[str]:
    """User type names ordered by type index, the order every run of a comparison shares."""
    names: dict[int, str] = {}
    for c in clients:
        names.setdefault(c.type_index, c.user_type)
    return [names[i] for i in sorted(names)]


# ------------------------------------------------------------------ one (method, seed)


def clients_digest(clients: Sequence[ClientTensors]) -> str:
    """A hash of the client tensors: a cached run is reused only for the very same data."""
    h = hashlib.sha256()
    for c in clients:
        h.update(f"{c.client_id}|{c.user_type}|{c.type_index}|{c.unseen}".encode())
        for pairs in (c.context, c.train, c.test):
            for t in (pairs.emb_a, pairs.emb_b, pairs.label):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def effective_method_config(exp: ExperimentConfig, method: str, input_dim: int) -> dict[str, Any]:
    """The method's settings with every default filled in (what the run really used)."""
    if method in REFERENCES:
        return {"model": replace(exp.model, input_dim=input_dim).to_dict()}
    from fedvpa.federation.registry import create_method

    return create_method(method, exp.method_kwargs(input_dim)).effective_config()


def run_fingerprint(
    exp: ExperimentConfig,
    method: str,
    seed: int,
    k_values: Sequence[int],
    digest: str,
    reference_steps: int | None = None,
    input_dim: int | None = None,
) -> str:
    """Hash of everything a run's result depends on. It includes the method's *effective*
    settings, not only the experiment's overrides: a changed default (a new model option) must
    not silently reuse a result computed under the old one."""
    effective = None if input_dim is None else effective_method_config(exp, method, input_dim)
    # clients-per-node changes the speed, never the result (tested): every value hashes as 1,
    # the value every comparison before the automatic default was run with. The partition key
    # is left out: the clients' digest holds the partition it resolved to, and comparisons made
    # before the key existed keep their fingerprints.
    config = {**exp.to_flat(), "clients-per-node": 1}
    config.pop("partition", None)
    blob = json.dumps(
        {
            "config": config,
            "effective": effective,
            "method": method,
            "seed": seed,
            "k": list(k_values),
            "clients": digest,
            "reference_steps": reference_steps if method in REFERENCES else None,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _latent_of_predictor(
    model: Any, clients: Sequence[ClientTensors], user_types: Sequence[str]
) -> tuple[dict[str, Any] | None, dict[str, float | None]]:
    """Evaluation posteriors of every client and the collapse diagnostics, as the federation
    computes them (``latent_report``), so KL and active units mean the same for every method."""
    from fedvpa.evaluation.latents import latent_report
    from fedvpa.training.local import infer_posterior

    stats = []
    for c in clients:
        mu, logvar = infer_posterior(model, c)
        stats.append((c, {"mu": mu.numpy(), "logvar": logvar.numpy()}))
    diagnostics = latent_report(stats)
    latent = latent_entry(
        {
            "client_id": [c.client_id for c in clients],
            "user_type": [c.user_type for c in clients],
            "unseen": [bool(c.unseen) for c in clients],
            "mu": [lat["mu"].astype(float).tolist() for _, lat in stats],
        },
        user_types,
    )
    return latent, diagnostics


def run_reference(
    name: str,
    exp: ExperimentConfig,
    clients: Sequence[ClientTensors],
    seed: int,
    user_types: Sequence[str],
    k_values: Sequence[int],
    steps: int | None = None,
) -> dict[str, Any]:
    """Train a pooled-data reference on the seen clients and evaluate it on every client.

    ``steps`` (None: the trainers' own defaults, 500 for the oracle, 1000 for centralised VPL)
    bounds the optimiser steps; both trainers early-stop on held-out seen clients anyway.
    """
    cfg = replace(exp.model, input_dim=clients[0].context.dim)
    budget = {} if steps is None else {"steps": int(steps)}
    with one_torch_thread():
        return _run_reference(name, cfg, budget, clients, seed, user_types, k_values)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train the references on one intra-op thread, then restore the caller's setting.

    Their models are small (a few hundred rows per matmul), so a second thread costs more in
    synchronisation than it saves, and far more on a shared machine: 1000 centralised-VPL steps
    on the toy data took 6.2 s on one thread and 75.5 s on two (2 cores, load 4.5).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_reference(
    name: str,
    cfg: ModelConfig,
    budget: dict[str, int],
    clients: Sequence[ClientTensors],
    seed: int,
    user_types: Sequence[str],
    k_values: Sequence[int],
) -> dict[str, Any]:
    from fedvpa.evaluation.accuracy import evaluate, flatten_report
    from fedvpa.training.centralised import train_centralised_vpl, train_oracle

    start = time.perf_counter()
    latent = None
    curve = None
    diagnostics: dict[str, float | None] = {}
    if name == "oracle":
        predictor: Predictor = train_oracle(clients, cfg, seed=seed, **budget)
        seconds = time.perf_counter() - start
    elif name == "centralised-vpl":
        # N(0, I) prior and no prototype pull: plain VPL on pooled data.
        vpl = train_centralised_vpl(
            clients, replace(cfg, use_ortho=False, prior="standard"), seed=seed, **budget
        )
        seconds = time.perf_counter() - start
        predictor = vpl
        latent, diagnostics = _latent_of_predictor(vpl.model, clients, user_types)
        curve = k_curve(vpl, clients, k_values)
    else:
        raise ConfigError(f"unknown reference {name!r}", field="methods")
    flat = {**flatten_report(evaluate(predictor, clients)), **diagnostics}
    return {
        "method": name,
        "seed": int(seed),
        "seconds": float(seconds),
        "user_types": list(user_types),
        "history": [],
        "final": final_from_eval(flat, user_types),
        "latent": latent,
        "k_curve": curve,
    }


def _check_same_run(run_dir: Path, expected: Mapping[str, Any]) -> None:
    """A finished run folder is reused only if it ran what this comparison would run."""
    path = run_dir / run_folder.CONFIG_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"finished run without a readable config ({exc})", path=str(path)
        ) from exc
    differ = sorted(k for k, v in expected.items() if recorded.get(k) != v)
    if differ:
        raise ConfigError(
            f"finished run under another configuration ({', '.join(differ)}): remove the folder "
            "or choose another --out",
            path=str(run_dir),
        )


def run_federated_method(
    name: str,
    exp: ExperimentConfig,
    clients: Sequence[ClientTensors],
    data_path: Path,
    seed: int,
    run_dir: Path,
    user_types: Sequence[str],
    k_values: Sequence[int],
) -> dict[str, Any]:
    """Train (or resume, or re-read) one federated run on Flower and turn its files into a run."""
    from fedvpa.federation.registry import create_method
    from fedvpa.federation.run_config import FederationConfig
    from fedvpa.federation.runtime import run_federated

    fed = exp.federation
    config = FederationConfig.from_experiment(
        exp.with_seed(seed),
        method=name,
        input_dim=clients[0].context.dim,
        data_path=data_path,
        run_dir=run_dir,
        num_clients=len(clients),
        resume=run_folder.checkpoint_path(run_dir).exists(),
    )
    kwargs = config.method_kwargs
    final = final_if_complete(run_dir, fed.num_server_rounds)
    if final is not None:
        expected = config.record()
        _check_same_run(
            run_dir,
            {
                key: expected[key]
                for key in (
                    "method",
                    "method-kwargs",
                    "seed",
                    "num-clients",
                    "clients-per-round",
                    "eval-every",
                    "data-path",
                )
            }
            | {"method_effective": config.method_effective()},
        )
    seconds: float | None = None
    if final is None:
        start = time.perf_counter()
        run_federated(config)
        seconds = time.perf_counter() - start
        final = final_if_complete(run_dir, fed.num_server_rounds)
        if final is None:
            raise RuntimeError(f"{run_dir}: no final.json for {fed.num_server_rounds} rounds")
    if seconds is None:  # re-read: the time of the process that finished it
        seconds = finite_or_none(final.get("seconds_this_process")) or 0.0
    rows = read_rows(run_dir)
    found = run_folder.load_checkpoint(run_dir)
    if found is None:
        raise RuntimeError(f"{run_dir}: final.json without a checkpoint of the final weights")
    method = create_method(name, kwargs)
    predictor = method.predictor(method.evaluation_arrays(found.state))
    return {
        "method": name,
        "seed": int(seed),
        "seconds": float(seconds),
        "user_types": list(user_types),
        "history": history_from_rows(rows, user_types),
        "final": final_from_eval(
            final.get("eval", {}), user_types, bytes_up_per_client_round(rows)
        ),
        "latent": latent_entry(final.get("latent"), user_types),
        "k_curve": k_curve(predictor, clients, k_values),
        "run_dir": str(run_dir),
    }


# ------------------------------------------------------------------ the comparison loop


def check_methods(methods: Sequence[str]) -> list[str]:
    """Known, distinct, non-empty: refused before any training starts."""
    from fedvpa.federation.registry import available_methods

    known = list(REFERENCES) + available_methods()
    names = [m.strip() for m in methods if m.strip()]
    if not names:
        raise ConfigError("no method given", field="methods")
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)} (known: {', '.join(known)})", field="methods"
        )
    duplicated = sorted({m for m in names if names.count(m) > 1})
    if duplicated:
        raise ConfigError(f"method(s) given twice: {', '.join(duplicated)}", field="methods")
    return names


def new_results(
    exp: ExperimentConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    k_values: Sequence[int],
    reference_steps: int | None = None,
) -> dict[str, Any]:
    """An empty results dict whose config records everything the comparison depends on."""
    config = {
        **exp.to_flat(),
        "methods": list(methods),
        "seeds": list(seeds),
        "k-values": list(k_values),
        "reference-steps": reference_steps,
    }
    return {"config": json.loads(json.dumps(config, default=str)), "runs": [], "failures": []}


def carry_over(results: dict[str, Any], out: Path) -> None:
    """Keep the runs of an earlier comparison in ``out`` that this one does not redo.

    Running more seeds (or methods) into the same folder then extends its report instead of
    replacing it. An earlier comparison under another configuration is refused before anything
    is written: mixing them would put incomparable numbers in one table.
    """
    path = Path(out) / RESULTS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        old_config, old_runs = dict(old["config"]), list(old["runs"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"unreadable earlier results ({exc})", path=str(path)) from exc

    def base(config: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in ("methods", "seeds")}

    new_base, old_base = base(results["config"]), base(old_config)
    differ = sorted(k for k in set(new_base) | set(old_base) if old_base.get(k) != new_base.get(k))
    if differ:
        raise ConfigError(
            f"holds a comparison under another configuration ({', '.join(differ)}): choose "
            "another --out",
            path=str(path),
        )
    planned = {(m, s) for m in results["config"]["methods"] for s in results["config"]["seeds"]}
    kept = [r for r in old_runs if (r.get("method"), r.get("seed")) not in planned]
    results["runs"] = kept + results["runs"]
    old_headroom = old.get("headroom")
    if isinstance(old_headroom, Mapping):
        redone = {str(s) for s in results["config"]["seeds"]}
        earlier = {s: v for s, v in old_headroom.items() if s not in redone}
        results["headroom"] = {**earlier, **results.get("headroom", {})}
    if isinstance(old.get("stage2"), Mapping):  # align folders stay; --stage2 refreshes them
        results["stage2"] = old["stage2"]
    config = results["config"]
    for key in ("methods", "seeds"):
        earlier = [v for v in old_config.get(key, []) if v not in config[key]]
        config[key] = earlier + config[key]


def save_results(results: Mapping[str, Any], out: Path) -> Path | None:
    """results.json and, once a run exists, the report; returns report.md's path (or None)."""
    from fedvpa.reports.markdown import write_report

    if results["runs"]:
        return write_report(results, out)
    out.mkdir(parents=True, exist_ok=True)
    run_folder.write_json(out / RESULTS_FILE, results)
    return None


def _describe(run: Mapping[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    final = run["final"]
    return (
        f"{run['seconds']:.1f}s | seen {pct(final['seen']['macro'])} "
        f"unseen {pct(final['unseen']['macro'])}"
    )


def _load_cached(path: Path, fingerprint: str) -> dict[str, Any] | None:
    stored = read_json_or_none(path)
    if not isinstance(stored, dict):
        return None
    if stored.get("fingerprint") != fingerprint or not isinstance(stored.get("run"), dict):
        return None
    return stored["run"]


def compare_seed(
    exp: ExperimentConfig,
    clients: Sequence[ClientTensors],
    seed: int,
    methods: Sequence[str],
    out: Path,
    results: dict[str, Any],
    *,
    data_path: Path | None = None,
    user_types: Sequence[str] | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    reference_steps: int | None = None,
    say: Say | None = None,
) -> None:
    """Run every method on one seed's prepared clients, appending to ``results`` in place.

    A method that raises is recorded in ``results["failures"]`` and the others still run; the
    results (and report) are saved after every (method, seed), so nothing finished is lost.
    ``data_path`` (the saved client tensors) is needed by the federated methods only.
    """
    out = Path(out)
    types = list(user_types) if user_types is not None else user_types_of(clients)
    digest = clients_digest(clients)
    for name in methods:
        run_dir = out / "runs" / f"{name}-seed{seed}"
        cache = run_dir / RUN_FILE
        fingerprint = run_fingerprint(
            exp, name, seed, k_values, digest, reference_steps, clients[0].context.dim
        )
        if say:
            say(f"[compare] seed {seed} | {name} | start")
        try:
            run = _load_cached(cache, fingerprint)
            reused = run is not None
            if run is None:
                if name in REFERENCES:
                    run = run_reference(name, exp, clients, seed, types, k_values, reference_steps)
                else:
                    if data_path is None:
                        raise ConfigError("federated methods need the saved client tensors")
                    run = run_federated_method(
                        name, exp, clients, Path(data_path), seed, run_dir, types, k_values
                    )
            # What ran, defaults filled in (equal to the cached run's by its fingerprint).
            run = {**run, "settings": effective_method_config(exp, name, clients[0].context.dim)}
            run = with_stability(run)
            candidate = {**results, "runs": [*results["runs"], run]}
            validate_results(candidate)  # a malformed run is a failure, not a lost report
        except Exception as exc:  # one failing method must not stop the comparison
            results["failures"].append(
                {"method": name, "seed": int(seed), "error": f"{type(exc).__name__}: {exc}"}
            )
            save_results(results, out)
            if say:
                say(f"[compare] seed {seed} | {name} | FAILED: {type(exc).__name__}: {exc}")
            continue
        results["runs"].append(run)
        if not reused:
            run_folder.write_json(cache, {"fingerprint": fingerprint, "run": run})
        save_results(results, out)
        if say:
            say(f"[compare] seed {seed} | {name} | {'reused ' if reused else ''}{_describe(run)}")


def record_headroom(
    results: dict[str, Any],
    clients: Sequence[ClientTensors],
    user_types: Sequence[str],
    seed: int,
    say: Say | None = None,
) -> None:
    """The data's personalisation headroom for this seed's partition, kept in ``results``.

    A data set it cannot measure (one user type, a type with a single label) records the error
    and the comparison goes on: it explains the results, it is not one of them.
    """
    from fedvpa.evaluation.headroom import client_headroom

    try:
        entry = client_headroom(clients, user_types, seed)
    except Exception as exc:
        entry = {"error": f"{type(exc).__name__}: {exc}"}
    results.setdefault("headroom", {})[str(seed)] = entry
    if not say:
        return
    if "error" in entry:
        say(f"[compare] seed {seed} | headroom not measured: {entry['error']}")
        return
    mono = entry["monolithic_macro"]
    for point in entry["points"]:
        if point["k"]:
            say(
                f"[compare] seed {seed} | headroom | k={point['k']}: ideal personalised "
                f"{100 * point['macro_accuracy']:.1f} vs monolithic probe {100 * mono:.1f} "
                f"(per-type probes {100 * entry['oracle_macro']:.1f})"
            )


def _print(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - progress lines are the console output


def run_compare(
    exp: ExperimentConfig,
    methods: list[str],
    seeds: list[int],
    out: Path,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    progress: bool = True,
    reference_steps: int | None = None,
    headroom: bool = True,
) -> dict[str, Any]:
    """Every method x seed on the same prepared clients; returns the results dict.

    With ``headroom`` each seed's partition also gets ``fedvpa.evaluation.headroom``'s
    Bayes-optimal personalised ceiling at its own context sizes (seconds; no training).

    The dict is the structure of ``fedvpa.reports.aggregate`` plus ``failures`` (method, seed,
    error); ``results.json`` and ``report.md`` in ``out`` are kept up to date as runs finish.
    """
    from fedvpa.experiment import check_privacy_budget, prepare_clients

    names = check_methods(methods)
    if exp.federation.secure_aggregation:
        raise ConfigError(
            "SecAgg+ runs through `fedvpa run` (one weights-only method), not compare",
            field="secure-aggregation",
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("need one or more distinct seeds", field="seeds")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise ConfigError("k values must be positive integers", field="k-values")
    if reference_steps is not None and reference_steps < 1:
        raise ConfigError("must be >= 1", field="reference-steps")
    out = Path(out)
    results = new_results(exp, names, seeds, k_values, reference_steps)
    carry_over(results, out)
    say = _print if progress else None
    for seed in seeds:
        if say:
            say(f"[compare] seed {seed} | preparing clients ({exp.data.data})")
        prepared = prepare_clients(exp.data, exp.embedding, seed, progress=progress)
        # before any run of this seed: a budget round 1 does not fit used to end each method
        # in "final.json without a checkpoint of the final weights"
        trained = [n for n in names if n not in REFERENCES]
        check_privacy_budget(exp, trained, prepared.clients)
        if progress and seed == seeds[0]:
            from fedvpa.runner import print_method_notes

            print_method_notes(exp, trained, prepared.clients[0].context.dim)
        if headroom:
            record_headroom(results, prepared.clients, prepared.partition.user_types, seed, say)
        compare_seed(
            exp,
            prepared.clients,
            seed,
            names,
            out,
            results,
            data_path=prepared.path,
            user_types=list(prepared.partition.user_types),
            k_values=k_values,
            reference_steps=reference_steps,
            say=say,
        )
    save_results(results, out)
    return results


def render_summary(results: Mapping[str, Any], out: Path) -> str:
    """The main table, the failures and where the report is: what the command prints."""
    from fedvpa.reports.aggregate import summarise
    from fedvpa.reports.markdown import render_table

    lines: list[str] = []
    if results["runs"]:
        try:
            lines.append(render_table(summarise(results)))
        except ResultsFormatError as exc:  # never expected: every run was validated
            lines.append(f"(no table: {exc})")
        lines.append(f"Report: {Path(out) / 'report.md'}")
    else:
        lines.append("No method finished.")
    for failure in results.get("failures", []):
        lines.append(f"FAILED {failure['method']} seed {failure['seed']}: {failure['error']}")
    lines.append(f"Results: {Path(out) / RESULTS_FILE}")
    return "\n".join(lines)


def default_out(data: str) -> Path:
    """``runs/compare-<data>``: the data name, or for a file its folder and stem."""
    from fedvpa.experiment import SYNTHETIC

    if data in SYNTHETIC:
        label = data
    else:
        path = Path(data)
        stem = path.name.split(".")[0]
        label = f"{path.parent.name}-{stem}" if path.parent.name else stem
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label).strip("-")
    return Path("runs") / f"compare-{safe or 'data'}"


__all__ = [
    "DEFAULT_K_VALUES",
    "DEFAULT_METHODS",
    "REFERENCES",
    "carry_over",
    "check_methods",
    "compare_seed",
    "record_headroom",
    "default_out",
    "new_results",
    "render_summary",
    "run_compare",
]
