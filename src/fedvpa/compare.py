"""``fedvpa compare``: every method on the same clients, backbone, rounds and seeds.

A comparison is only fair when nothing but the method changes, so each seed prepares its clients
once and every method (the pooled-data references and the federated methods on Flower) reads those
same tensors. The output folder holds one run folder per (method, seed) under ``runs/``, plus
``results.json`` and ``report.md`` (see ``fedvpa.reports``), both rewritten after each (method,
seed) so a killed comparison loses at most the run in flight.

Resuming is per run: a ``run.json`` whose fingerprint (configuration, seed, method, k values and
the client tensors themselves) matches is reused as is; a federated run folder with a complete
``final.json`` is re-read without training; one with only a checkpoint is resumed by Flower.

Everything written into the results dict is a plain JSON value; ``macro`` is recomputed here as
the unweighted mean of the per-type values reported next to it, so the table cannot disagree with
its own columns (``reports.aggregate`` checks this).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig
from fedvpa.federation import checkpoint as ckpt
from fedvpa.methods.base import Predictor
from fedvpa.model.config import ModelConfig
from fedvpa.reports.aggregate import (
    METHOD_ORDER,
    ResultsFormatError,
    seen_stability,
    validate_results,
)

REFERENCES: tuple[str, ...] = ("oracle", "centralised-vpl")
DEFAULT_METHODS: tuple[str, ...] = METHOD_ORDER
DEFAULT_K_VALUES: tuple[int, ...] = (1, 2, 4, 8)
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"
SPLITS = ("seen", "unseen")

Say = Callable[[str], None]


# ------------------------------------------------------------------ plain values


def as_float(value: Any) -> float | None:
    """A finite Python float, or None for None / NaN / inf / anything not a number.

    Results must be strict JSON (no NaN) and the report treats null as "not measured", which is
    what a NaN from an empty group means.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_count(value: Any) -> int | None:
    """A non-negative integral number as an int (``4.0`` -> 4), else None.

    A count that arrives as a float (a metric passed through a float conversion) is still a
    count; anything fractional, negative or not a number is not one and is dropped.
    """
    number = as_float(value)
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Unweighted mean of the non-null values (None if there are none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def user_types_of(clients: Sequence[ClientTensors]) -> list[str]:
    """User type names ordered by type index, the order every run of a comparison shares."""
    names: dict[int, str] = {}
    for c in clients:
        names.setdefault(c.type_index, c.user_type)
    return [names[i] for i in sorted(names)]


# ------------------------------------------------------------------ metrics -> results entries


def split_final(flat: Mapping[str, Any], split: str, user_types: Sequence[str]) -> dict[str, Any]:
    """``{"per_type", "macro", "conflict", "n"}`` of one split from a flat ``eval/...`` report."""
    per_type = {t: as_float(flat.get(f"eval/{split}/{t}")) for t in user_types}
    conflict_types = [as_float(flat.get(f"eval/conflict/{split}/{t}")) for t in user_types]
    n = as_float(flat.get(f"eval/{split}/n"))
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
    kl = as_float(flat.get("eval/kl"))
    active = as_float(flat.get("eval/active_units"))
    silhouette = as_float(flat.get("eval/silhouette"))
    out["kl"] = max(kl, 0.0) if kl is not None else None  # -1e-9 from float error is 0
    out["active_units"] = active
    out["silhouette"] = min(max(silhouette, -1.0), 1.0) if silhouette is not None else None
    out["bytes_up_per_client_round"] = as_float(bytes_up_per_client_round)
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
        kl = as_float(flat.get("eval/kl"))
        entry["kl"] = max(kl, 0.0) if kl is not None else None
        entry["active_units"] = as_float(flat.get("eval/active_units"))
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
    mu = [[as_float(x) for x in row] for row in latent["mu"]]
    if any(x is None for row in mu for x in row):
        return None
    types = [str(t) for t in latent.get("user_type", [])]
    unseen = [bool(u) for u in latent.get("unseen", [])]
    if len(types) != len(mu) or len(unseen) != len(mu) or set(types) - set(user_types):
        return None
    protos = latent.get("prototypes")
    prototypes = None
    if protos:
        prototypes = [[as_float(x) for x in row] for row in protos]
        if any(x is None for row in prototypes for x in row):
            prototypes = None
    out: dict[str, Any] = {"mu": mu, "user_type": types, "unseen": unseen}
    out["prototypes"] = prototypes
    if "client_id" in latent:
        out["client_id"] = [int(c) for c in latent["client_id"]]
    return out


# ------------------------------------------------------------------ context-size curve


def truncate_context(client: ClientTensors, k: int) -> ClientTensors:
    """The client with only its first ``k`` context pairs left to infer ``z`` from.

    The train split is emptied too, so whatever a predictor reads as context (``context`` for
    unseen clients, ``context + train`` for seen ones) is exactly those ``k`` pairs; the test
    pairs are kept untouched as the pairs being scored.
    """
    if not 1 <= k <= len(client.context):
        raise ValueError(f"client {client.client_id}: k={k} outside 1..{len(client.context)}")
    index = torch.arange(k)
    return replace(
        client, context=client.context.subset(index), train=client.train.subset(index[:0])
    )


def usable_k(clients: Sequence[ClientTensors], k_values: Sequence[int]) -> list[int]:
    """The k values every unseen client has enough context pairs for (so each point uses k)."""
    unseen = [c for c in clients if c.unseen and len(c.test) > 0]
    if not unseen:
        return []
    most = min(len(c.context) for c in unseen)
    return sorted({int(k) for k in k_values if 1 <= int(k) <= most})


def k_curve(
    predictor: Predictor, clients: Sequence[ClientTensors], k_values: Sequence[int]
) -> dict[str, Any] | None:
    """Unseen-client macro accuracy when only the first k context pairs are revealed."""
    from fedvpa.evaluation.accuracy import evaluate

    ks = usable_k(clients, k_values)
    unseen = [c for c in clients if c.unseen and len(c.test) > 0]
    curve: list[float] = []
    for k in ks:
        report = evaluate(predictor, [truncate_context(c, k) for c in unseen])
        groups = report.get("unseen", {})
        per_type = [as_float(v) for key, v in groups.items() if key not in ("macro", "n")]
        value = mean_or_none(per_type)
        if value is None:
            return None
        curve.append(value)
    return {"k": ks, "unseen_macro": curve} if ks else None


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
    blob = json.dumps(
        {
            "config": exp.to_flat(),
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
    from fedvpa.federation.strategy import latent_report
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
    from fedvpa.evaluation.accuracy import evaluate
    from fedvpa.federation.strategy import flatten_report
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


def _read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / ckpt.METRICS_FILE
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
    """A run folder's ``final.json`` if the run reached ``num_rounds``, else None."""
    final = read_json_or_none(run_dir / ckpt.FINAL_FILE)
    return final if isinstance(final, dict) and final.get("final_round") == num_rounds else None


def _check_same_run(run_dir: Path, expected: Mapping[str, Any]) -> None:
    """A finished run folder is reused only if it ran what this comparison would run."""
    path = run_dir / ckpt.CONFIG_FILE
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
    from fedvpa.federation.runtime import run_federated
    from fedvpa.federation.strategy import FederationConfig

    fed = exp.federation
    config = FederationConfig.from_experiment(
        exp.with_seed(seed),
        method=name,
        input_dim=clients[0].context.dim,
        data_path=data_path,
        run_dir=run_dir,
        num_clients=len(clients),
        resume=ckpt.checkpoint_path(run_dir).exists(),
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
        seconds = as_float(final.get("seconds_this_process")) or 0.0
    rows = _read_rows(run_dir)
    found = ckpt.load_checkpoint(run_dir)
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
    ckpt.write_json(out / RESULTS_FILE, results)
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
            ckpt.write_json(cache, {"fingerprint": fingerprint, "run": run})
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
    from fedvpa.experiment import prepare_clients

    names = check_methods(methods)
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
    "bytes_up_per_client_round",
    "carry_over",
    "check_methods",
    "compare_seed",
    "record_headroom",
    "default_out",
    "final_from_eval",
    "new_results",
    "history_from_rows",
    "k_curve",
    "render_summary",
    "run_compare",
    "truncate_context",
    "usable_k",
    "with_stability",
]
