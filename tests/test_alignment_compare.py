"""``fedvpa compare --stage2``: a comparison's own run folders open as stage-1 runs, stage 2 runs
on each seed's latent run (resumed, never redone), and its tables reach the comparison's report.

The comparison's federated run goes through the in-process round protocol (as the stage-1
fixture does) and stage 2 through a tiny random-init Llama, so this is seconds, not minutes."""
# ruff: noqa: F811 - pytest fixtures imported from test_alignment_rank are test parameters here

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_alignment_policy import tiny_llama_folder
from test_alignment_rank import (  # noqa: F401 - shared fixtures
    STAGE1,
    _cache,
    fedvpa,
    in_process_run_federated,
    stage1,
)

from fedvpa import compare
from fedvpa.alignment.options import QUICK, AlignOptions
from fedvpa.alignment.preferences import open_stage1_run
from fedvpa.alignment.stage2_compare import check_stage2, run_stage2
from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig, prepare_clients


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def compared(stage1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-seed comparison of fedvpa-gp on the stage-1 fixture's data (its cache)."""
    import os

    import fedvpa.federation.runtime as runtime

    out = tmp_path_factory.mktemp("compare") / "cmp"
    exp = ExperimentConfig.from_flat(STAGE1, source="test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FEDVPA_CACHE", os.environ["FEDVPA_TEST_STAGE1_CACHE"])
            mp.setattr(runtime, "run_federated", in_process_run_federated)
            prepared = prepare_clients(exp.data, exp.embedding, 0, progress=False)
            results = compare.new_results(exp, ["fedvpa-gp"], [0], compare.DEFAULT_K_VALUES)
            compare.compare_seed(
                exp,
                prepared.clients,
                0,
                ["fedvpa-gp"],
                out,
                results,
                data_path=prepared.path,
                user_types=list(prepared.partition.user_types),
            )
    finally:
        torch.set_num_threads(threads)
    assert results["failures"] == [], results["failures"]
    return out


def test_a_comparison_run_opens_as_the_stage1_run_it_is(compared: Path, stage1: Path) -> None:
    run = open_stage1_run(compared / "runs" / "fedvpa-gp-seed0")
    same = open_stage1_run(stage1)  # `fedvpa run` with the same keys and seed
    assert run.method == "fedvpa-gp" and run.flat["seed"] == 0
    assert run.root == compared / "runs" / "fedvpa-gp-seed0"  # align goes inside it
    for key in ("data", "num-clients", "pairs-per-client", "num-server-rounds", "backbone"):
        assert run.flat[key] == same.flat[key], key
    assert run.latent_dim == same.latent_dim and run.final["final_round"] == 4


def test_stage2_options_are_checked_before_any_stage1_work(tiny: Path) -> None:
    ok = AlignOptions(policy=str(tiny), quick=True)
    checked = check_stage2(["fedvpa-gp"], ["oracle", "fedvpa-gp"], ok)
    assert checked.dpo_steps == QUICK["dpo_steps"]  # the quick profile filled in
    with pytest.raises(ConfigError, match="no latent z"):
        check_stage2(["fedavg-bt"], ["fedavg-bt"], ok)
    with pytest.raises(ConfigError, match="not one of the compared"):
        check_stage2(["fedvpl"], ["fedvpa-gp"], ok)
    with pytest.raises(ConfigError, match="--dpo-steps"):
        check_stage2(["fedvpa-gp"], ["fedvpa-gp"], AlignOptions(policy=str(tiny), dpo_steps=0))
    with pytest.raises(ConfigError):
        check_stage2(["fedvpa-gp"], ["fedvpa-gp"], AlignOptions(policy=str(tiny.parent / "no")))
    with pytest.raises(ConfigError, match="--stage2-prompts"):
        no_file = AlignOptions(policy=str(tiny), prompts_file="/no")
        check_stage2(["fedvpa-gp"], ["fedvpa-gp"], no_file)


def test_the_cli_refuses_a_bad_stage2_option_before_training(tmp_path: Path) -> None:
    result = fedvpa(
        "--out", str(tmp_path / "cmp"), "compare", "--methods", "oracle,fedavg-bt",
        "--stage2", "--stage2-methods", "fedavg-bt",
    )  # fmt: skip
    assert result.returncode == 2 and "no latent z" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cmp").exists()


def test_stage2_runs_per_seed_resumes_and_reaches_the_report(compared: Path, tiny: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    results = json.loads((compared / "results.json").read_text())
    opts = AlignOptions(
        policy=str(tiny), num_prompts=6, eval_prompts=5, max_new_tokens=6, dpo_steps=2,
        batch_size=4, gen_batch_size=4, judge_pairs=80, best_of_n=3, examples=1,
    )  # fmt: skip
    saved: list[int] = []

    def save(r: dict) -> None:
        saved.append(len(r.get("stage2", {}).get("runs", [])))
        compare.save_results(r, compared)

    lines: list[str] = []
    threads = torch.get_num_threads()
    try:
        run_stage2(results, opts, ["fedvpa-gp"], save=save, say=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert results["failures"] == [] and saved[-1] == 1
    (entry,) = results["stage2"]["runs"]
    align_dir = compared / "runs" / "fedvpa-gp-seed0" / "align"
    assert entry["align_dir"] == str(align_dir) and (align_dir / "report.json").is_file()
    assert set(entry["win_rate_vs_base"]) == {"harmless", "helpful"}
    assert entry["switching"] and entry["switching_best_of_n"]
    md = (compared / "report.md").read_text()
    assert "## Stage 2" in md and "best-of-n, z_harmless" in md and "proxies" in md
    assert "freshly generated labelled pairs" in md  # each run's own note: where its judges learnt
    assert json.loads((compared / "results.json").read_text())["stage2"]["runs"][0]["seed"] == 0

    # again: every step of the seed's align is resumed, none redone; a later comparison
    # without --stage2 keeps the section
    lines.clear()
    again = json.loads((compared / "results.json").read_text())
    run_stage2(again, opts, ["fedvpa-gp"], save=lambda r: None, say=lines.append)
    assert sum("skipped" in line for line in lines) == 9
    later = compare.new_results(
        ExperimentConfig.from_flat(STAGE1, source="test"), ["fedvpa-gp"], [0],
        compare.DEFAULT_K_VALUES,
    )  # fmt: skip
    compare.carry_over(later, compared)
    assert later["stage2"]["runs"][0]["method"] == "fedvpa-gp"
