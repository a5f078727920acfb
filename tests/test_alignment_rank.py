"""Stage 2 without a policy: z from a finished stage-1 run folder, and ``fedvpa rank``.

The stage-1 folder is made by ``runner.run_experiment`` (so it has exactly the files
``fedvpa run`` writes) with Flower's simulation swapped for the in-process round protocol, which
gives the same numbers in seconds instead of a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedvpa.alignment.preferences import (
    choose_z,
    open_stage1_run,
    parse_mix,
    preference_groups,
    z_from_file,
)
from fedvpa.alignment.rank import best_of_n, candidate_text, rank_candidates, read_candidates
from fedvpa.data.readers import read_pairs
from fedvpa.data.schema import PreferencePair
from fedvpa.embeddings.pipeline import pair_texts
from fedvpa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = {
    "num-clients": 20,
    "clients-per-round": 10,
    "num-server-rounds": 4,
    "pairs-per-client": 16,
    "synthetic-pairs-per-type": 200,
    "baseline": "",
    "eval-every": 2,
}


def in_process_run_federated(config: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``federation.runtime.run_federated`` without Flower: the same protocol, method and run
    folder (RunFolder writes config.json, checkpoints and final.json as the ServerApp does)."""
    from fedvpa.embeddings.pipeline import load_client_tensors
    from fedvpa.federation.registry import create_method
    from fedvpa.protocol.in_process import run_in_process
    from fedvpa.protocol.run_folder import RunFolder

    method = create_method(config.method, config.method_kwargs)
    settings = config.settings
    folder = RunFolder(config.run_dir, config.identity(), settings.num_server_rounds)
    effective = json.loads(json.dumps(method.effective_config()))
    folder.begin(False, {**config.record(), "method_effective": effective})
    history: list[dict[str, Any]] = []

    def on_round(row: dict[str, Any], protocol: Any) -> None:
        history.append(row)
        folder.record(row["round"], protocol.state, history)

    protocol, _, _ = run_in_process(
        method, load_client_tensors(config.data_path), settings, on_round
    )
    final = protocol.final_metrics(history, 0.0, 0)
    folder.finish(final)
    return final


def make_stage1_run(out: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    import fedvpa.federation.runtime as runtime
    from fedvpa.experiment import ExperimentConfig
    from fedvpa.runner import run_experiment

    monkeypatch.setattr(runtime, "run_federated", in_process_run_federated)
    exp = ExperimentConfig.from_flat({**STAGE1, **overrides}, source="test")
    run_experiment(exp, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("stage1") / "run"
    threads = torch.get_num_threads()
    # one thread: the selector's ops are tiny, and on a busy 2-core machine more threads made
    # the 1200 local steps 9x slower (124 s against 14 s)
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FEDVPA_CACHE", str(cache))
            make_stage1_run(out, mp)
    finally:
        torch.set_num_threads(threads)
    os.environ.setdefault("FEDVPA_TEST_STAGE1_CACHE", str(cache))
    return out


@pytest.fixture(autouse=True)
def _cache(stage1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads the embeddings the fixture's run wrote (no MiniLM call for the data)."""
    monkeypatch.setenv("FEDVPA_CACHE", os.environ["FEDVPA_TEST_STAGE1_CACHE"])


def fedvpa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from fedvpa.cli import main; main()", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def conflict_pairs(n: int) -> list[PreferencePair]:
    """Pairs of the embedded data on which the two user types disagree, helpful users' label."""
    pairs = [p for p in read_pairs("synthetic-2", seed=123) if p.conflict]
    return [p for p in pairs if p.user_type == "helpful"][:n]


# ---------------------------------------------------------------------- z from stage 1


def test_groups_are_user_types_and_prototypes_from_seen_clients(stage1: Path) -> None:
    run = open_stage1_run(stage1)
    groups = preference_groups(run)
    assert {"helpful", "harmless"} <= set(groups)
    latent = run.final["latent"]
    rows = [
        i
        for i, (t, u) in enumerate(zip(latent["user_type"], latent["unseen"], strict=True))
        if t == "helpful" and not u
    ]
    # a group's z is the mean z stage 1's evaluation read (the population placement), which
    # serves the group far better than the mean of the encoder means (README, "Stage 2")
    mu = np.asarray(latent["mu"], dtype=np.float32)
    z = np.asarray(latent["z"], dtype=np.float32)
    assert z.shape == mu.shape and not np.allclose(z, mu, atol=1e-3)
    assert np.allclose(groups["helpful"].z, z[rows].mean(axis=0), atol=1e-6)
    assert groups["helpful"].clients == len(rows)
    assert any(name.startswith("proto-") for name in groups)
    # the method folder names the same run
    assert open_stage1_run(stage1 / "fedvpa-gp").method_dir == run.method_dir


def test_evaluated_z_falls_back_to_the_encoder_and_refuses_bad_rows() -> None:
    from fedvpa.alignment.preferences import evaluated_z

    mu = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert evaluated_z({"mu": mu.tolist()}, mu) is mu  # encoder inference: no z recorded
    z = mu + 1
    assert np.array_equal(evaluated_z({"z": z.tolist()}, mu), z)
    for bad in (z[:2].tolist(), [[1.0, float("nan")]] * 3, [[1.0], [1.0, 2.0], []], "x"):
        with pytest.raises(ConfigError, match=r"final\.json.*latent\.z"):
            evaluated_z({"z": bad}, mu, "run/fedvpa-gp/final.json")


def test_mix_is_convex_and_unknown_groups_are_listed(stage1: Path) -> None:
    run = open_stage1_run(stage1)
    groups = preference_groups(run)
    mixed = choose_z(run, mix="helpful=0.3,harmless=0.7").z
    assert np.allclose(mixed, 0.3 * groups["helpful"].z + 0.7 * groups["harmless"].z, atol=1e-6)
    assert parse_mix("helpful=1,harmless=3") == [("helpful", 0.25), ("harmless", 0.75)]
    with pytest.raises(ConfigError, match="known: .*harmless.*helpful"):
        choose_z(run, mix="helpful=0.5,kind=0.5")
    with pytest.raises(ConfigError, match="unknown group 'kind'"):
        choose_z(run, prefer="kind")
    with pytest.raises(ConfigError, match="exactly one"):
        choose_z(run, prefer="helpful", mix="helpful=1")
    for bad in ("helpful", "helpful=-1", "helpful=x", "helpful=0"):
        with pytest.raises(ConfigError):
            parse_mix(bad)


def test_z_file_json_and_npy_and_wrong_size(stage1: Path, tmp_path: Path) -> None:
    run = open_stage1_run(stage1)
    d = run.latent_dim
    (tmp_path / "z.json").write_text(json.dumps([0.5] * d))
    np.save(tmp_path / "z.npy", np.ones(d, dtype=np.float32))
    assert np.allclose(z_from_file(tmp_path / "z.json", d), 0.5)
    assert np.allclose(choose_z(run, z_file=tmp_path / "z.npy").z, 1.0)
    (tmp_path / "short.json").write_text(json.dumps([0.5] * (d - 1)))
    with pytest.raises(ConfigError, match=f"{d} floats"):
        z_from_file(tmp_path / "short.json", d)


def test_context_pairs_give_the_z_of_their_user_type(stage1: Path, tmp_path: Path) -> None:
    """A user's few labelled pairs land nearer their own type's group z than the other's."""
    run = open_stage1_run(stage1)
    groups = preference_groups(run)
    all_pairs = read_pairs("synthetic-2", seed=7)
    for user_type, other in (("helpful", "harmless"), ("harmless", "helpful")):
        own = [p for p in all_pairs if p.user_type == user_type and p.conflict][:8]
        path = tmp_path / f"{user_type}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                for p in own
            )
        )
        z = choose_z(run, context=path).z
        assert np.linalg.norm(z - groups[user_type].z) < np.linalg.norm(z - groups[other].z)


def test_context_z_is_read_as_stage1_read_unseen_clients(stage1: Path, tmp_path: Path) -> None:
    """FedVPA-GP read an unseen client's ``z`` against the population of posterior means its
    server kept (``latent-inference`` auto); ``--context`` reads a user's pairs the same way,
    with the weights stage 1 evaluated. With ``latent-inference = "encoder"`` it is the
    encoder's posterior mean, as before."""
    from dataclasses import replace

    from fedvpa.alignment.preferences import _embedder
    from fedvpa.embeddings.pipeline import embed_pairs
    from fedvpa.training.local import infer_posterior, population_latent

    run = open_stage1_run(stage1)
    population = run.population()
    assert population is not None
    mu, n = population
    assert mu.shape[1] == run.latent_dim and len(n) == len(mu) >= 2
    pairs = conflict_pairs(6)
    path = tmp_path / "context.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            for p in pairs
        )
    )
    tensors = embed_pairs(read_pairs(path), *_embedder(run), progress=False)
    z = choose_z(run, context=path).z
    expected = population_latent(run.selector(), tensors, mu, n).numpy()
    assert np.allclose(z, expected, atol=1e-6)
    encoder_run = replace(
        run,
        model_cfg=replace(run.model_cfg, latent_inference="encoder"),
        _selector=None,
        _arrays=None,
    )
    assert encoder_run.population() is None
    z_encoder = choose_z(encoder_run, context=path).z
    assert np.allclose(z_encoder, infer_posterior(run.selector(), tensors)[0].numpy(), atol=1e-6)
    assert not np.allclose(z, z_encoder, atol=1e-3)
    # "prior" (FedVPL's default): the same Bayes step over the prior's fixed draws
    from fedvpa.model.priors import standard_normal_draws

    prior_run = replace(
        run,
        model_cfg=replace(run.model_cfg, latent_inference="prior", prior="standard"),
        _selector=None,
        _arrays=None,
    )
    draws, weights = prior_run.population()
    torch.testing.assert_close(
        draws, standard_normal_draws(run.latent_dim, run.model_cfg.prior_draws)
    )
    z_prior = choose_z(prior_run, context=path).z
    want = population_latent(run.selector(), tensors, draws, weights).numpy()
    assert np.allclose(z_prior, want, atol=1e-6)


# ---------------------------------------------------------------------- rank


def test_candidate_text_is_what_stage1_embedded() -> None:
    pair = conflict_pairs(1)[0]
    assert candidate_text(pair.prompt, pair.response_a) == pair_texts(pair)[0]
    assert candidate_text(pair.prompt, pair.response_b) == pair_texts(pair)[1]


def test_groups_rank_disputed_replies_in_opposite_orders(stage1: Path) -> None:
    """On pairs where the types disagree, the helpful z puts the helpful user's choice first
    and the harmless z the other reply, for most pairs."""
    run = open_stage1_run(stage1)
    groups = preference_groups(run)
    pairs = conflict_pairs(20)
    agree = {"helpful": 0, "harmless": 0}
    for pair in pairs:
        replies = [pair.response_a, pair.response_b]
        for name in agree:
            best = rank_candidates(run, groups[name].z, pair.prompt, replies)[0].index
            helpful_choice = pair.preferred
            agree[name] += int(best == helpful_choice)
    assert agree["helpful"] >= 15 and agree["harmless"] <= 5, agree


def test_ranking_scores_are_consistent(stage1: Path) -> None:
    run = open_stage1_run(stage1)
    z = preference_groups(run)["harmless"].z
    pair = conflict_pairs(3)[2]
    replies = [pair.response_a, pair.response_b, "I cannot help with that.", "Sure."]
    ranked = rank_candidates(run, z, pair.prompt, replies)
    assert sorted(r.index for r in ranked) == [0, 1, 2, 3]
    scores = [r.score for r in ranked]
    wins = [r.win_prob for r in ranked]
    assert scores == sorted(scores, reverse=True) and wins == sorted(wins, reverse=True)


def test_fedvpa_rank_prints_opposite_winners(stage1: Path, tmp_path: Path) -> None:
    pair = conflict_pairs(1)[0]
    cands = tmp_path / "cands.jsonl"
    cands.write_text(
        json.dumps({"text": pair.response_a}) + "\n" + json.dumps(pair.response_b) + "\n"
    )
    firsts = {}
    for group in ("helpful", "harmless"):
        result = fedvpa(
            "rank", str(stage1), "--prefer", group, "--prompt", pair.prompt, "--candidates",
            str(cands),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"group {group}" in result.stdout
        firsts[group] = result.stdout.splitlines()[2].split()[1]  # the first row's candidate
    assert firsts["helpful"] != firsts["harmless"]


def test_read_candidates_formats_and_errors(tmp_path: Path) -> None:
    plain = tmp_path / "c.txt"
    plain.write_text("one\n\ntwo\n")
    assert read_candidates(plain) == ["one", "two"]
    bad = tmp_path / "c.jsonl"
    bad.write_text('"one"\n{"x": 1}\n')
    with pytest.raises(ConfigError, match=":2:"):
        read_candidates(bad)


def unfinished_run(stage1: Path, tmp_path: Path) -> Path:
    """A stage-1 run folder whose method never finished (config, no final.json)."""
    unfinished = tmp_path / "unfinished"
    (unfinished / "fedvpa-gp").mkdir(parents=True)
    (unfinished / "config.json").write_text((stage1 / "config.json").read_text())
    return unfinished


@pytest.mark.parametrize(
    "case",
    ["missing-run", "unfinished-run", "unknown-group", "wrong-z", "no-z", "one-candidate"],
)
def test_bad_input_is_one_line_and_exit_2(stage1: Path, tmp_path: Path, case: str) -> None:
    run_dir = str(stage1)
    cands = tmp_path / "c.txt"
    cands.write_text("a reply\nanother reply\n")
    z_opts = ["--prefer", "helpful"]
    if case == "missing-run":
        run_dir = str(tmp_path / "nothing")
    elif case == "unfinished-run":
        run_dir = str(unfinished_run(stage1, tmp_path))
    elif case == "unknown-group":
        z_opts = ["--prefer", "kind"]
    elif case == "wrong-z":
        (tmp_path / "z.json").write_text("[1, 2]")
        z_opts = ["--z", str(tmp_path / "z.json")]
    elif case == "no-z":
        z_opts = []
    elif case == "one-candidate":
        cands.write_text("only one\n")
    result = fedvpa("rank", run_dir, *z_opts, "--prompt", "hi", "--candidates", str(cands))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedvpa: error:"), result.stderr


def test_best_of_n_picks_what_rank_puts_first_for_every_prompt(stage1: Path) -> None:
    run = open_stage1_run(stage1)
    groups = {name: g.z for name, g in preference_groups(run).items() if g.kind == "user-type"}
    pairs = conflict_pairs(4)
    prompts = [p.prompt for p in pairs]
    candidates = [[p.response_a, p.response_b, p.response_a + " Thanks."] for p in pairs]
    scores = best_of_n(run, prompts, candidates, groups)
    for name, z in groups.items():
        assert scores[name].shape == (4, 3)
        for i, prompt in enumerate(prompts):
            ranked = rank_candidates(run, z, prompt, candidates[i])
            assert int(np.argmax(scores[name][i])) == ranked[0].index
            assert scores[name][i][ranked[0].index] == pytest.approx(ranked[0].score, abs=1e-5)
    with pytest.raises(ValueError, match="same number"):
        best_of_n(run, prompts[:2], [candidates[0], candidates[1][:2]], groups)
