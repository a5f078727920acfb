"""``fedvpa compare``: context truncation, results that the report accepts, failures, resume.

The references run on toy tensor clients (``tests/helpers.py``) through the same per-seed loop
the command uses, bypassing the text-and-backbone preparation; one slow test drives a federated
method through Flower end to end.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TYPE_NAMES, make_toy_clients

from fedvpa import compare
from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.errors import ConfigError
from fedvpa.evaluation import k_curve as k_curve_module
from fedvpa.experiment import ExperimentConfig
from fedvpa.reports import run_files
from fedvpa.reports.aggregate import MACRO_TOLERANCE, macro_of, validate_results

DIM = 16
REFERENCE_STEPS = 100  # the trainers early-stop; toy data needs few steps
SMALL_MODEL = {"hidden-dim": 16, "feature-dim": 8, "latent-dim": 4, "selector-hidden": 8}


def toy_clients(num_clients: int = 12, num_unseen: int = 4) -> list[ClientTensors]:
    return make_toy_clients(
        num_clients=num_clients, pairs=16, dim=DIM, seed=3, num_context=8, num_unseen=num_unseen
    )


def toy_experiment(**extra: Any) -> ExperimentConfig:
    flat = {"num-clients": 12, "num-server-rounds": 3, "clients-per-round": 4, "eval-every": 1}
    flat.update(SMALL_MODEL)
    flat.update(extra)
    return ExperimentConfig.from_flat(flat)


class SpyPredictor:
    """Records what each call could read; predicts from the context's mean label."""

    def __init__(self) -> None:
        self.calls: list[tuple[ClientTensors, PairTensors]] = []

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        self.calls.append((client, pairs))
        bias = float(client.context.label.mean()) if len(client.context) else 0.5
        return torch.full((len(pairs),), bias)


# ------------------------------------------------------------------ k-curve truncation


def test_truncation_keeps_exactly_the_first_k_context_pairs_and_no_test_pair() -> None:
    client = toy_clients()[-1]
    for k in (1, 3, 8):
        cut = k_curve_module.truncate_context(client, k)
        assert len(cut.context) == k and len(cut.train) == 0 and len(cut.labelled) == k
        assert torch.equal(cut.context.emb_a, client.context.emb_a[:k])
        assert torch.equal(cut.test.emb_a, client.test.emb_a)
        for row in cut.labelled.emb_a:  # nothing a posterior may read is a test pair
            assert not (row == client.test.emb_a).all(dim=1).any()
    seen = toy_clients()[0]
    assert len(seen.train) > 0 and len(k_curve_module.truncate_context(seen, 2).labelled) == 2
    with pytest.raises(ValueError):
        k_curve_module.truncate_context(client, 9)


def test_k_curve_scores_unseen_test_pairs_with_k_context_pairs() -> None:
    clients = toy_clients()
    spy = SpyPredictor()
    curve = k_curve_module.k_curve(spy, clients, (1, 2, 4, 8, 16))
    assert curve is not None and curve["k"] == [1, 2, 4, 8]  # 16 > the 8 pairs available
    unseen = {c.client_id: c for c in clients if c.unseen}
    per_k = len(unseen) * 2  # every test set scored in both A/B orders
    assert len(spy.calls) == per_k * 4
    for i, (client, pairs) in enumerate(spy.calls):
        k = curve["k"][i // per_k]
        original = unseen[client.client_id]
        assert len(client.labelled) == k
        assert torch.equal(client.context.emb_a, original.context.emb_a[:k])
        assert len(pairs) == len(original.test)
        test_rows = {tuple(r.tolist()) for r in original.test.emb_a} | {
            tuple(r.tolist()) for r in original.test.emb_b
        }
        assert {tuple(r.tolist()) for r in pairs.emb_a} <= test_rows
    assert all(0.0 <= v <= 1.0 for v in curve["unseen_macro"])


def test_k_curve_is_null_without_unseen_clients() -> None:
    assert k_curve_module.k_curve(SpyPredictor(), toy_clients(num_unseen=0), (1, 2)) is None


# ------------------------------------------------------------------ metric conversion


def test_final_from_eval_recomputes_macro_and_drops_nan() -> None:
    flat = {
        "eval/seen/helpful": 0.8,
        "eval/seen/harmless": 0.6,
        "eval/seen/macro": 0.123,  # disagrees with the per-type values: recomputed
        "eval/seen/n": 40.0,
        "eval/unseen/helpful": float("nan"),
        "eval/unseen/harmless": 0.5,
        "eval/conflict/seen/helpful": 0.7,
        "eval/conflict/seen/harmless": 0.5,
        "eval/kl": float("inf"),
        "eval/active_units": 3.0,
    }
    final = run_files.final_from_eval(flat, list(TYPE_NAMES), 1234)
    assert final["seen"]["macro"] == pytest.approx(0.7)
    assert final["seen"]["n"] == 40 and final["seen"]["conflict"] == pytest.approx(0.6)
    assert final["unseen"]["per_type"] == {"helpful": None, "harmless": 0.5}
    assert final["unseen"]["macro"] == 0.5 and final["unseen"]["n"] == 0
    assert final["kl"] is None and final["active_units"] == 3.0
    assert final["bytes_up_per_client_round"] == 1234.0


def test_history_and_bytes_from_metrics_rows() -> None:
    rows = [
        {"round": 1, "bytes_up": 300, "replies": 3},
        {"round": 2, "bytes_up": 500, "replies": 2, "eval": {"eval/seen/helpful": 0.6}},
        {"round": 2, "bytes_up": 500, "replies": 2, "eval": {"eval/seen/helpful": 0.7}},
        {"round": 3, "bytes_up": 0, "replies": 0, "eval": {"eval/kl": 0.2}},
    ]
    history = run_files.history_from_rows(rows, list(TYPE_NAMES))
    assert [h["round"] for h in history] == [2, 3]
    assert history[0]["seen_macro"] == 0.7 and history[1]["kl"] == 0.2
    assert run_files.bytes_up_per_client_round(rows) == pytest.approx(1300 / 7)
    assert run_files.bytes_up_per_client_round([]) is None
    assert all("num_groups" not in h for h in history)  # a method without groups: no key


def test_history_carries_the_number_of_groups_when_a_round_records_it() -> None:
    rows = [
        {"round": 1, "num_groups": 7},  # a training-only round: no history entry
        {"round": 2, "num_groups": 5, "eval": {"eval/seen/helpful": 0.6}},
        {"round": 3, "num_groups": 4.0, "eval": {"eval/seen/helpful": 0.7}},  # a float count
        {"round": 4, "eval": {"eval/seen/helpful": 0.7}},
        {"round": 5, "num_groups": 2.5, "eval": {"eval/seen/helpful": 0.7}},  # not a count
        {"round": 6, "num_groups": None, "eval": {"eval/seen/helpful": 0.7}},
    ]
    history = run_files.history_from_rows(rows, list(TYPE_NAMES))
    assert [h.get("num_groups") for h in history] == [5, 4, None, None, None]
    assert isinstance(history[1]["num_groups"], int)
    assert ["num_groups" in h for h in history] == [True, True, False, False, False]
    assert run_files.as_count(True) is None and run_files.as_count(-1) is None


def test_every_kept_run_gets_its_end_of_training_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = [0.6, 0.7, 0.65, 0.8, 0.75, 0.7, 0.72, 0.74, 0.71, 0.79, 0.77, 0.76]

    def fake_reference(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # a run with a history, as a federated method returns it (no Flower needed)
        split = {"per_type": {"helpful": 0.76, "harmless": 0.76}, "macro": 0.76, "n": 10}
        return {
            "method": name,
            "seed": 0,
            "seconds": 1.0,
            "user_types": list(TYPE_NAMES),
            "history": [
                {"round": r + 1, "seen_macro": v, "unseen_macro": None, "num_groups": 3}
                for r, v in enumerate(seen)
            ],
            "final": {"seen": split, "unseen": split},
        }

    monkeypatch.setattr(compare, "run_reference", fake_reference)
    exp = toy_experiment()
    results = compare.new_results(exp, ["oracle"], [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(exp, toy_clients(), 0, ["oracle"], tmp_path, results)
    assert results["failures"] == []
    (run,) = results["runs"]
    assert run["final"]["seen_last10_mean"] == pytest.approx(float(np.mean(seen[-10:])))
    assert run["final"]["seen_last10_std"] == pytest.approx(float(np.std(seen[-10:], ddof=1)))
    cached = json.loads((tmp_path / "runs" / "oracle-seed0" / "run.json").read_text())["run"]
    assert cached["final"]["seen_last10_std"] == run["final"]["seen_last10_std"]
    # a run.json written before the summary existed is completed when it is reused
    for key in ("seen_last10_mean", "seen_last10_std"):
        del cached["final"][key]
    path = tmp_path / "runs" / "oracle-seed0" / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "run": cached}))
    again = compare.new_results(exp, ["oracle"], [0], compare.DEFAULT_K_VALUES)
    monkeypatch.setattr(compare, "run_reference", None)  # must not be called
    compare.compare_seed(exp, toy_clients(), 0, ["oracle"], tmp_path, again)
    assert again["failures"] == [] and again["runs"] == results["runs"]
    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| oracle (ref.) | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["76.0", "73.9", "4.5"]  # final, mean and std over the last 10 evals
    assert cells[-2] == "3"  # the groups of the last round


def test_unknown_or_repeated_methods_are_refused_before_training() -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        compare.check_methods(["oracle", "fedvpl-typo"])
    with pytest.raises(ConfigError, match="twice"):
        compare.check_methods(["oracle", "oracle"])
    assert compare.check_methods(list(compare.DEFAULT_METHODS)) == list(compare.DEFAULT_METHODS)


def test_default_out_names_the_data() -> None:
    assert compare.default_out("synthetic-2") == Path("runs/compare-synthetic-2")
    assert compare.default_out("../shared/data/relabeled-hh-rlhf/dev.jsonl.gz") == Path(
        "runs/compare-relabeled-hh-rlhf-dev"
    )


# ------------------------------------------------------------------ references end to end


@pytest.fixture(scope="module")
def reference_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("compare-refs")
    exp = toy_experiment()
    results = compare.new_results(exp, list(compare.REFERENCES), [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(
        exp,
        toy_clients(),
        0,
        list(compare.REFERENCES),
        out,
        results,
        reference_steps=REFERENCE_STEPS,
    )
    return results, out


def test_reference_results_validate_and_reach_the_report(
    reference_results: tuple[dict[str, Any], Path],
) -> None:
    results, out = reference_results
    assert results["failures"] == []
    validate_results(results)
    assert [r["method"] for r in results["runs"]] == ["oracle", "centralised-vpl"]
    on_disk = json.loads((out / "results.json").read_text())
    validate_results(on_disk)
    assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))
    assert (out / "report.md").is_file()
    # the report says what ran with defaults filled in, one column per method
    report = (out / "report.md").read_text()
    assert "Method settings (defaults filled in)" in report
    assert "| setting | oracle | centralised-vpl |" in report and "`model.pull_on`" in report
    dim = toy_clients()[0].context.dim
    expected = compare.effective_method_config(toy_experiment(), "centralised-vpl", dim)
    assert results["runs"][1]["settings"] == expected and expected["model"]["input_dim"] == dim
    oracle, vpl = results["runs"]
    for run in results["runs"]:
        assert run["history"] == [] and run["user_types"] == list(TYPE_NAMES)
        # no rounds, so no end-of-training summary: recorded as not measured
        assert run["final"]["seen_last10_mean"] is None and run["final"]["seen_last10_std"] is None
        for split in ("seen", "unseen"):
            final = run["final"][split]
            assert final["n"] > 0
            assert abs(final["macro"] - macro_of(final["per_type"])) <= MACRO_TOLERANCE
    # The oracle knows each client's true type on separable toy data: far above chance.
    assert oracle["final"]["seen"]["macro"] > 0.8 and oracle["k_curve"] is None
    assert vpl["latent"] is not None and len(vpl["latent"]["mu"]) == 12
    assert vpl["k_curve"]["k"] == [1, 2, 4, 8]
    # k = 8 is every context pair an unseen toy client has: the curve ends at the final score.
    assert vpl["k_curve"]["unseen_macro"][-1] == pytest.approx(vpl["final"]["unseen"]["macro"])
    assert vpl["final"]["kl"] is not None and vpl["final"]["bytes_up_per_client_round"] is None
    assert all(
        isinstance(v, float) and math.isfinite(v)
        for v in vpl["k_curve"]["unseen_macro"] + [vpl["seconds"]]
    )


def test_finished_runs_are_reused_when_the_comparison_is_rerun(
    reference_results: tuple[dict[str, Any], Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    first, done = reference_results
    out = tmp_path / "again"
    shutil.copytree(done, out)

    def must_not_train(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(compare, "run_reference", must_not_train)
    exp = toy_experiment()
    again = compare.new_results(exp, list(compare.REFERENCES), [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(
        exp, toy_clients(), 0, list(compare.REFERENCES), out, again, reference_steps=REFERENCE_STEPS
    )
    assert again["failures"] == [] and again["runs"] == json.loads(json.dumps(first["runs"]))
    # Other data (or another config) is another fingerprint: retrained, here -> recorded failure.
    other = [replace(c, unseen=not c.unseen) if c.client_id == 0 else c for c in toy_clients()]
    third = compare.new_results(exp, ["oracle"], [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(exp, other, 0, ["oracle"], out, third, reference_steps=REFERENCE_STEPS)
    assert [f["method"] for f in third["failures"]] == ["oracle"]


def test_a_later_comparison_extends_the_folder_or_is_refused(
    reference_results: tuple[dict[str, Any], Path],
) -> None:
    first, out = reference_results
    later = compare.new_results(toy_experiment(), ["oracle"], [1], compare.DEFAULT_K_VALUES)
    compare.carry_over(later, out)
    assert [(r["method"], r["seed"]) for r in later["runs"]] == [
        ("oracle", 0),
        ("centralised-vpl", 0),
    ]
    assert later["config"]["seeds"] == [0, 1]
    assert later["config"]["methods"] == ["centralised-vpl", "oracle"]
    other = compare.new_results(
        toy_experiment(**{"num-server-rounds": 7}), ["oracle"], [1], compare.DEFAULT_K_VALUES
    )
    with pytest.raises(ConfigError, match="num-server-rounds"):
        compare.carry_over(other, out)


def test_a_failing_method_is_recorded_and_earlier_results_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = compare.run_reference

    def flaky(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if name == "centralised-vpl":
            raise RuntimeError("boom")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(compare, "run_reference", flaky)
    exp = toy_experiment()
    methods = ["oracle", "centralised-vpl", "fedavg-bt"]  # fedavg-bt: no saved tensors given
    results = compare.new_results(exp, methods, [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(
        exp, toy_clients(), 0, methods, tmp_path, results, reference_steps=REFERENCE_STEPS
    )
    assert [r["method"] for r in results["runs"]] == ["oracle"]
    failures = {f["method"]: f["error"] for f in results["failures"]}
    assert failures["centralised-vpl"] == "RuntimeError: boom"
    assert "ConfigError" in failures["fedavg-bt"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in on_disk["runs"]] == ["oracle"]
    assert len(on_disk["failures"]) == 2
    assert (tmp_path / "report.md").is_file()


def test_headroom_is_recorded_reported_and_carried_over(
    reference_results: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    first, done = reference_results
    out = tmp_path / "headroom"
    shutil.copytree(done, out)
    results = json.loads(json.dumps(first))
    lines: list[str] = []
    compare.record_headroom(results, toy_clients(), list(TYPE_NAMES), 0, lines.append)
    entry = results["headroom"]["0"]
    # seen toy clients read 8 context + 4 train pairs, unseen ones their 8 context pairs
    assert entry["context_sizes"] == {"seen": 12, "unseen": 8}
    assert [p["k"] for p in entry["points"]] == [0, 8, 12]
    # separable toy types that disagree on half the pairs: plenty of room to personalise
    at12 = entry["points"][2]
    assert at12["macro_accuracy"] > entry["monolithic_macro"] + 0.1
    assert any("headroom | k=12" in line for line in lines)
    compare.save_results(results, out)
    report = (out / "report.md").read_text()
    assert "## Personalisation headroom (what the data allows)" in report
    assert "ideal personalised, seen clients (k = 12)" in report
    # one user type only: recorded as not measured, and the report still renders
    one_type = [c for c in toy_clients() if c.type_index == 0]
    compare.record_headroom(results, one_type, [TYPE_NAMES[0]], 1)
    assert "at least 2 user types" in results["headroom"]["1"]["error"]
    compare.save_results(results, out)
    assert "seed 1: not measured" in (out / "report.md").read_text()
    # a later comparison of seed 2 into the folder keeps both earlier seeds' headroom
    later = compare.new_results(toy_experiment(), ["oracle"], [2], compare.DEFAULT_K_VALUES)
    compare.carry_over(later, out)
    assert sorted(later["headroom"]) == ["0", "1"]


# ------------------------------------------------------------------ Flower end to end


@pytest.mark.slow
def test_one_federated_method_through_flower(tmp_path: Path) -> None:
    from fedvpa.embeddings.pipeline import save_client_tensors
    from fedvpa.reports.aggregate import summarise

    clients = toy_clients(num_clients=6, num_unseen=2)
    data_path = tmp_path / "clients.pt"
    save_client_tensors(clients, data_path)
    exp = toy_experiment(**{"num-clients": 6, "clients-per-round": 2, "local-steps": 5})
    out = tmp_path / "compare"
    results = compare.new_results(exp, ["fedavg-bt"], [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(exp, clients, 0, ["fedavg-bt"], out, results, data_path=data_path)
    assert results["failures"] == []
    (run,) = results["runs"]
    assert [h["round"] for h in run["history"]] == [1, 2, 3]
    assert run["final"]["seen_last10_mean"] == pytest.approx(
        float(np.mean([h["seen_macro"] for h in run["history"]]))
    )
    assert "num_groups" not in run["history"][-1]  # fedavg-bt has no groups
    assert run["final"]["bytes_up_per_client_round"] > 0 and run["latent"] is None
    assert run["k_curve"]["k"] == [1, 2, 4, 8]
    for name in ("results.json", "report.md", "accuracy_per_round.png", "k_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "runs" / "fedavg-bt-seed0" / "final.json").is_file()
    assert "fedavg-bt" in summarise(json.loads((out / "results.json").read_text()))["methods"]

    # Without run.json the finished Flower run is re-read from its files, not retrained ...
    (out / "runs" / "fedavg-bt-seed0" / "run.json").unlink()
    again = compare.new_results(exp, ["fedavg-bt"], [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(exp, clients, 0, ["fedavg-bt"], out, again, data_path=data_path)
    (rerun,) = again["runs"]
    assert {k: v for k, v in rerun.items() if k != "seconds"} == {
        k: v for k, v in run.items() if k != "seconds"
    }
    # ... but never under another configuration.
    changed = toy_experiment(**{"num-clients": 6, "clients-per-round": 2, "local-steps": 6})
    other = compare.new_results(changed, ["fedavg-bt"], [0], compare.DEFAULT_K_VALUES)
    compare.compare_seed(changed, clients, 0, ["fedavg-bt"], out, other, data_path=data_path)
    assert other["runs"] == [] and "another configuration" in other["failures"][0]["error"]


@pytest.mark.parametrize("method", ["fedvpa-gp", "fedavg-bt", "fedbiscuit", "centralised-vpl"])
def test_fingerprint_follows_the_methods_effective_settings(monkeypatch, method) -> None:
    # Regression: the fingerprint hashed only the experiment's overrides, so changing a model
    # default (a new option) silently reused every run computed under the old default.
    from dataclasses import asdict

    from fedvpa.compare import run_fingerprint
    from fedvpa.experiment import ExperimentConfig
    from fedvpa.model.config import ModelConfig

    exp = ExperimentConfig.from_flat({})
    before = run_fingerprint(exp, method, 0, [1, 4], "digest", None, 384)
    assert before == run_fingerprint(exp, method, 0, [1, 4], "digest", None, 384)
    # A default that changes after the experiment's keys were read: only the method's
    # effective settings see it.
    monkeypatch.setattr(ModelConfig, "to_dict", lambda self: {**asdict(self), "beta": 0.02})
    assert run_fingerprint(exp, method, 0, [1, 4], "digest", None, 384) != before


def test_fingerprint_ignores_clients_per_node() -> None:
    # clients-per-node changes how messages travel, never a result (test_federation checks
    # the runs are identical), so a finished comparison is reused whatever value it ran with,
    # including those run with 1 before the automatic default.
    from fedvpa.compare import run_fingerprint
    from fedvpa.experiment import ExperimentConfig

    prints = {
        run_fingerprint(
            ExperimentConfig.from_flat({"clients-per-node": k}), "fedvpl", 0, [1], "d", None, 384
        )
        for k in (0, 1, 3, 10)
    }
    assert len(prints) == 1
    other_seed = ExperimentConfig.from_flat({"clients-per-node": 10})
    assert run_fingerprint(other_seed, "fedvpl", 1, [1], "d", None, 384) not in prints


def test_fingerprint_of_batched_clients(monkeypatch) -> None:
    # batched-clients = true trains with other floating-point rounding: another result, another
    # fingerprint. Off, a comparison hashes as it did before the key existed, so finished
    # comparisons are reused.
    from dataclasses import asdict

    from fedvpa.compare import run_fingerprint
    from fedvpa.experiment import ExperimentConfig
    from fedvpa.methods.local_config import LocalConfig

    def fingerprint(flat: dict[str, object]) -> str:
        return run_fingerprint(ExperimentConfig.from_flat(flat), "fedvpl", 0, [1], "d", None, 384)

    off = fingerprint({})
    assert fingerprint({"batched-clients": True}) != off
    to_flat = ExperimentConfig.to_flat
    monkeypatch.setattr(
        ExperimentConfig,
        "to_flat",
        lambda self: {k: v for k, v in to_flat(self).items() if k != "batched-clients"},
    )
    monkeypatch.setattr(
        LocalConfig,
        "to_dict",
        lambda self: {k: v for k, v in asdict(self).items() if k != "batched_clients"},
    )
    assert fingerprint({}) == off


def test_a_dp_budget_round_one_does_not_fit_is_refused_before_any_run(monkeypatch, tmp_path):
    # Bug: compare ran each federated method for 0 rounds and failed it with "final.json
    # without a checkpoint of the final weights", leaving a folder of failures behind.
    import types

    import fedvpa.experiment as experiment

    clients = make_toy_clients(8, pairs=12, dim=16)
    prepared = types.SimpleNamespace(
        clients=clients, path=tmp_path / "c.pt", partition=types.SimpleNamespace(user_types=[])
    )
    monkeypatch.setattr(experiment, "prepare_clients", lambda *a, **k: prepared)
    exp = ExperimentConfig.from_flat(
        {"dp-noise-multiplier": 1.0, "dp-max-epsilon": 0.01, "clients-per-round": 4},
        source="test",
    )
    with pytest.raises(ConfigError, match="not even one round fits"):
        compare.run_compare(exp, ["oracle", "fedavg-bt"], [0], tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()
