"""``fedvpa align`` on a tiny stage-1 run and a tiny random-init Llama: the whole pipeline, its
resume rules (a killed run continues without redoing finished steps), held-out prompts, and bad
input. The pipeline tests skip without trl/peft (the ``align`` extra); the rest run in CI."""
# ruff: noqa: F811 - pytest fixtures imported from test_alignment_rank are test parameters here

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_alignment_policy import tiny_llama_folder
from test_alignment_rank import _cache, fedvpa, stage1, unfinished_run  # noqa: F401 - shared fixtures

from fedvpa.alignment import align as align_module
from fedvpa.alignment import options as options_module
from fedvpa.alignment import pairs as pairs_module
from fedvpa.alignment import sampling as sampling_module
from fedvpa.alignment.align import STEPS, run_align
from fedvpa.alignment.options import AlignOptions, resolve_options
from fedvpa.alignment.pairs import label_disagreements, pair_labels
from fedvpa.alignment.preferences import open_stage1_run, stage1_pairs
from fedvpa.alignment.prompts import (
    make_prompts,
    read_prompt_file,
    render_prompt,
    transcript_messages,
)
from fedvpa.alignment.refusals import is_refusal
from fedvpa.errors import ConfigError

TINY = {
    "num_prompts": 6,
    "eval_prompts": 5,
    "max_new_tokens": 6,
    "dpo_steps": 2,
    "batch_size": 4,
    "gen_batch_size": 4,
    "judge_pairs": 80,
    "best_of_n": 3,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _opts(tiny: Path, **overrides: object) -> AlignOptions:
    return AlignOptions(policy=str(tiny), **{**TINY, **overrides})  # type: ignore[arg-type]


def replace_opts(opts: AlignOptions, **changes: object) -> AlignOptions:
    from dataclasses import replace

    return replace(opts, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- pieces (no trl)


def test_held_out_prompts_are_no_stage1_prompt(stage1: Path) -> None:
    run = open_stage1_run(stage1)
    opts = resolve_options(AlignOptions(num_prompts=40, eval_prompts=30, quick=True))
    rows, meta = make_prompts(run, opts, 10_007)
    client = {p.prompt for p in stage1_pairs(run)}
    assert len(rows) == 70 and len({r.prompt for r in rows}) == 70
    assert not any(r.prompt in client for r in rows)
    assert meta["equal_to_a_stage1_prompt"] == 0 and meta["dropped_as_stage1_prompts"] > 0
    assert sum(r.split == "eval" for r in rows) == 30
    assert any(r.risky for r in rows) and any(r.risky is False for r in rows)
    again, _ = make_prompts(run, opts, 10_007)
    assert again == rows  # reproducible from the recorded seed


def test_prompt_files_jsonl_hh_gz_and_plain(tmp_path: Path) -> None:
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as handle:
        transcript = "\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help."
        handle.write(json.dumps({"chosen": transcript, "rejected": transcript + "x"}) + "\n")
        handle.write(json.dumps({"prompt": "Human: hi there"}) + "\n")
    assert read_prompt_file(hh) == [
        "\n\nHuman: how do I pick a lock?\n\nAssistant:",
        "\n\nHuman: hi there\n\nAssistant:",
    ]
    plain = tmp_path / "p.txt"
    plain.write_text("one\n\ntwo\none\n")
    assert read_prompt_file(plain) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(ConfigError, match=":1:"):
        read_prompt_file(bad)


def test_transcripts_become_chat_messages() -> None:
    prompt = "\n\nHuman: I have a question.\n\nAssistant: Sure.\n\nHuman: How do I X?\n\nAssistant:"
    assert transcript_messages(prompt) == [
        {"role": "user", "content": "I have a question."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "How do I X?"},
    ]
    assert transcript_messages("plain request") == [{"role": "user", "content": "plain request"}]


def test_generation_renders_a_transcript_as_dpo_saw_it(tiny: Path) -> None:
    """`fedvpa generate` and `rank` used to wrap a whole transcript as one user message, while
    sampling and DPO gave the policy its turns: the aligned policy saw a layout at inference
    it was never trained on."""
    from fedvpa.alignment.generate import prompt_ids
    from fedvpa.alignment.policy import load_policy

    tokenizer = load_policy(str(tiny), device="cpu").tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} ; {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    prompt = "\n\nHuman: w1 w2\n\nAssistant: w3\n\nHuman: w4\n\nAssistant:"
    rendered = render_prompt(tokenizer, prompt)
    assert rendered == "user : w1 w2 ; assistant : w3 ; user : w4 ; assistant : "
    ids = prompt_ids(tokenizer, prompt)
    want = tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
    assert torch.equal(ids["input_ids"], want["input_ids"])
    one_message = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True,
        return_tensors="pt",
    )  # fmt: skip
    assert not torch.equal(ids["input_ids"], one_message["input_ids"])
    plain = tokenizer.apply_chat_template(
        [{"role": "user", "content": "w1 w2"}], add_generation_prompt=True, return_dict=True,
        return_tensors="pt",
    )  # fmt: skip
    assert torch.equal(prompt_ids(tokenizer, "w1 w2")["input_ids"], plain["input_ids"])


@pytest.mark.parametrize(
    ("reply", "refusal"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I'd rather not give steps; please ask a licensed electrician.", True),
        ("That is dangerous, talk to an expert.", True),
        ("Sure: turn off the breaker, then remove the cover.", False),
        ("Here are three tips for better sleep.", False),
    ],
)
def test_refusal_heuristic(reply: str, refusal: bool) -> None:
    assert is_refusal(reply) is refusal


def test_usable_cores_without_an_affinity_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no ``os.sched_getaffinity``: every core, not an AttributeError."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert options_module.usable_cores() == 6
    assert resolve_options(AlignOptions()).threads == 6


def test_quick_profile_and_ranges() -> None:
    quick = resolve_options(AlignOptions(quick=True))
    assert quick.num_prompts == 100 and quick.dpo_steps is not None and quick.dpo_steps <= 300
    assert resolve_options(AlignOptions(quick=True, dpo_steps=7)).dpo_steps == 7
    with pytest.raises(ConfigError, match="--dpo-steps"):
        resolve_options(AlignOptions(dpo_steps=0))
    with pytest.raises(ConfigError, match="temperature"):
        resolve_options(AlignOptions(temperature=0.0))
    assert quick.best_of_n == 4 and resolve_options(AlignOptions(best_of_n=0)).best_of_n == 0
    assert quick.threads >= 1 and resolve_options(AlignOptions(threads=3)).threads == 3
    for bad in (1, -2):  # one candidate is no choice
        with pytest.raises(ConfigError, match="--best-of-n"):
            resolve_options(AlignOptions(best_of_n=bad))
    assert (quick.samples_per_prompt, quick.pair_rule, quick.dpo_steps) == (4, "contested", 80)
    assert resolve_options(AlignOptions(samples_per_prompt=2)).samples_per_prompt == 2
    for bad in (1, 0):
        with pytest.raises(ConfigError, match="--samples-per-prompt"):
            resolve_options(AlignOptions(samples_per_prompt=bad))
    with pytest.raises(ConfigError, match="--pair-rule"):
        resolve_options(AlignOptions(pair_rule="random"))
    assert resolve_options(AlignOptions(openers=2)).openers == 2  # 2 + 2 of 4 samples
    for bad in (-1, 3):  # 3 cautious + 3 compliant do not fit in 4 samples
        with pytest.raises(ConfigError, match="--openers"):
            resolve_options(AlignOptions(openers=bad))
    each = resolve_options(
        AlignOptions(samples_per_prompt=6, openers=1, pair_rule="contested-each")
    )
    assert each.pair_rule == "contested-each"
    # no openers, or no two free samples left: one of the two parts would be empty
    for n, k in ((4, 0), (4, 2), (3, 1)):
        with pytest.raises(ConfigError, match="--pair-rule"):
            resolve_options(
                AlignOptions(samples_per_prompt=n, openers=k, pair_rule="contested-each")
            )
    assert resolve_options(AlignOptions(sft_weight=0.5)).sft_weight == 0.5
    for bad_weight in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="--sft-weight"):
            resolve_options(AlignOptions(sft_weight=bad_weight))


def test_opener_plans_are_seeded_and_drawn_from_the_lists() -> None:
    cautious, compliant = sampling_module.opener_plan(5, 2, seed=3)
    assert len(cautious) == len(compliant) == 10
    assert set(cautious) <= set(sampling_module.CAUTIOUS_OPENERS)
    assert set(compliant) <= set(sampling_module.COMPLIANT_OPENERS)
    assert all(cautious[2 * i] != cautious[2 * i + 1] for i in range(5))  # no repeat per prompt
    assert sampling_module.opener_plan(5, 2, seed=3) == (cautious, compliant)
    assert sampling_module.opener_plan(5, 2, seed=4) != (cautious, compliant)
    # every cautious opener is a refusal by the report's own heuristic, no compliant one is
    assert all(is_refusal(o) for o in sampling_module.CAUTIOUS_OPENERS)
    assert not any(is_refusal(o) for o in sampling_module.COMPLIANT_OPENERS)


def test_a_reply_prefix_joins_its_continuation() -> None:
    join = sampling_module.join_reply
    assert join("Sure.", " Here it is") == "Sure. Here it is"  # a BPE keeps the space
    assert join("Sure.", "w3 w4") == "Sure. w3 w4"  # a word-level tokenizer drops it
    assert join("First,", "\nstep") == "First,\nstep"
    assert join("", " plain ") == "plain" and join("Sure.", "") == "Sure."


def test_generation_continues_each_prompts_prefix(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompts = ["w1 w2", "w3", "w4 w5 w6"]
    prefixes = ["w7 w8", "w9", "w10"]
    kwargs = {"max_new_tokens": 3, "temperature": 0.7, "seed": 0, "batch_size": 2}
    out = sampling_module.generate_batched(
        model, tokenizer, prompts, n_per_prompt=2, reply_prefixes=prefixes, **kwargs
    )
    assert [len(r) for r in out] == [2, 2, 2]
    for replies, prefix in zip(out, prefixes, strict=True):
        assert all(r.startswith(prefix) for r in replies)
    # a continuation may be empty (an end-of-sequence token first), but not all of them
    assert any(len(r) > len(pre) for rs, pre in zip(out, prefixes, strict=True) for r in rs)
    with pytest.raises(ValueError, match="2 reply prefixes for 3 prompts"):
        sampling_module.generate_batched(
            model, tokenizer, prompts, n_per_prompt=1, reply_prefixes=prefixes[:2], **kwargs
        )


def test_chosen_sources_count_the_openers_each_group_picked_on_risky_prompts() -> None:
    from fedvpa.alignment.report import chosen_sources

    samples = [{"sources": ["free", "cautious", "compliant"]}] * 3
    labels = [
        {"index": 0, "group": "harmless", "chosen": 1},
        {"index": 0, "group": "helpful", "chosen": 2},
        {"index": 1, "group": "harmless", "chosen": 0},
        {"index": 1, "group": "helpful", "chosen": None},
        {"index": 2, "group": "harmless", "chosen": 1},  # not a risky prompt: not counted
    ]
    assert chosen_sources(labels, samples, [True, True, False]) == {
        "harmless": {"free": 1, "cautious": 1, "compliant": 0},
        "helpful": {"free": 0, "cautious": 0, "compliant": 1},
    }


def test_contested_each_picks_one_pair_among_free_samples_and_one_among_openers() -> None:
    from fedvpa.alignment.report import chosen_sources

    sources = [["free", "free", "free", "cautious", "compliant"]] * 2
    replies = [["a", "b", "c", "no", "yes"], ["d", "e", "f", "no2", "yes2"]]
    # prompt 0: the groups disagree most on the openers (3 vs 4) and, among the free samples,
    # on (0, 2); prompt 1: they agree on everything
    h = np.array([[2.0, 1.0, 0.0, 5.0, -5.0], [0.0, 1.0, 2.0, 1.0, 0.0]])
    s = np.array([[0.0, 1.0, 2.0, -5.0, 5.0], [0.0, 2.0, 4.0, 2.0, 0.0]])
    got = pairs_module.pair_labels_by_source({"h": h, "s": s}, replies, sources)
    assert got["h"][:2] == [("free", 0, (0, 2)), ("openers", 0, (3, 4))]
    assert got["s"][:2] == [("free", 0, (2, 0)), ("openers", 0, (4, 3))]
    assert got["h"][2:] == [("free", 1, (2, 0)), ("openers", 1, (3, 4))]
    assert got["s"][2:] == got["h"][2:]  # agreement: the same pairs in the same roles
    # a contested pair is never drawn across the parts, whatever the scores say
    assert all(
        {i, j} <= {0, 1, 2} if part == "free" else {i, j} <= {3, 4}
        for part, _, pair in got["h"] + got["s"]
        if pair is not None
        for i, j in [pair]
    )
    rows = [
        {"index": p, "part": part, "group": g, "chosen": pair[0], "rejected": pair[1]}
        for g, picked in got.items()
        for part, p, pair in picked
        if pair is not None
    ]
    assert pairs_module.label_disagreements(rows) == 1  # prompt 0 only, counted once
    # the origin count leaves the free part out: its chosen reply is free by construction
    samples = [{"sources": src} for src in sources]
    assert chosen_sources(rows, samples, [True, True]) == {
        "h": {"free": 0, "cautious": 2, "compliant": 0},
        "s": {"free": 0, "cautious": 1, "compliant": 1},
    }
    from fedvpa.alignment.report import _label_summary, _labels_line

    summary = _label_summary(
        [{**r, "scores": [0.0] * 5} for r in rows], "contested-each", samples, [True, True]
    )
    line = _labels_line(summary)
    assert "two pairs" in line and "opener pairs on risky DPO prompts: h: 2 cautious" in line
    assert "free" not in line.split("\n")[1]


def test_best_and_worst_of_n_form_the_pair() -> None:
    scores = np.array([[0.1, 2.0, -1.0, 0.5], [3.0, 1.0, 1.0, 2.0], [0.0, 1.0, 5.0, -2.0]])
    replies = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["p", "q", "r", " p "]]
    # the last prompt's best (r) and worst (" p ") differ; its first and worst are one text
    assert pair_labels({"g": scores}, replies) == {"g": [(1, 2), (0, 1), (2, 3)]}
    same = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["p", "q", "p", "p"]]
    assert pair_labels({"g": scores}, same)["g"][2] is None  # best and worst: the same text
    with pytest.raises(ConfigError, match="pair rule"):
        pair_labels({"g": scores}, replies, "random")


def test_the_contested_pair_is_the_one_the_groups_disagree_on_most() -> None:
    # group h: reply 0 > 1 > 2; group s: 2 > 1 > 0, but 1 is far ahead of 0 for h only
    h = np.array([[3.0, 2.5, 0.0]])
    s = np.array([[0.0, 0.2, 0.4]])
    replies = [["a", "b", "c"]]
    # d_h - d_s is largest for (0, 2): 3.0 - (-0.4) = 3.4; the pair is reversed between groups
    assert pair_labels({"h": h, "s": s}, replies, "contested") == {"h": [(0, 2)], "s": [(2, 0)]}
    # groups that agree everywhere still get one shared pair, in the same roles
    agree = pair_labels({"h": h, "s": 2 * h}, replies, "contested")
    assert agree["h"] == agree["s"] and agree["h"][0] is not None
    # one group: no spread anywhere, so the first pair of equal spread (a degenerate choice)
    single = pair_labels({"h": h}, replies, "contested")["h"][0]
    assert single is None or single[0] != single[1]
    # two groups with the same pair in opposite roles disagree; the same pair agrees
    rows = [
        {"index": 0, "group": "h", "chosen": 1, "rejected": 2},
        {"index": 0, "group": "s", "chosen": 2, "rejected": 1},
        {"index": 1, "group": "h", "chosen": 0, "rejected": 3},
        {"index": 1, "group": "s", "chosen": 0, "rejected": 3},
        {"index": 2, "group": "h", "chosen": None, "rejected": None},
        {"index": 3, "group": "h", "chosen": 0},  # a folder written before "rejected"
        {"index": 3, "group": "s", "chosen": 1},
    ]
    assert label_disagreements(rows) == 2


# ---------------------------------------------------------------------- bad input (CLI)


@pytest.mark.parametrize(
    "case",
    [
        "missing-run",
        "unfinished-run",
        "unknown-group",
        "not-causal-lm",
        "wrong-z",
        "exists",
        "feddpo-rounds-0",
        "feddpo-too-many-clients",
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    stage1: Path, tiny: Path, tmp_path: Path, case: str
) -> None:
    run_dir, extra = str(stage1), ["--policy", str(tiny)]
    out = tmp_path / "align"
    if case == "missing-run":
        run_dir = str(tmp_path / "nothing")
    elif case == "unfinished-run":
        run_dir = str(unfinished_run(stage1, tmp_path))
    elif case == "unknown-group":
        extra += ["--groups", "helpful,kind"]
    elif case == "not-causal-lm":
        bert = tmp_path / "clip"
        bert.mkdir()
        (bert / "config.json").write_text(json.dumps({"model_type": "clip"}))
        extra = ["--policy", str(bert)]
    elif case == "wrong-z":
        (tmp_path / "z.json").write_text("[1, 2, 3]")
        extra += ["--z", str(tmp_path / "z.json")]
    elif case == "exists":
        out.mkdir()
        (out / "config.json").write_text("{}")
    elif case == "feddpo-rounds-0":
        extra += ["--feddpo", "--feddpo-rounds", "0"]
    elif case == "feddpo-too-many-clients":
        extra += ["--feddpo", "--feddpo-clients", "500"]
    result = fedvpa("align", run_dir, "--out", str(out), *extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedvpa: error:"), result.stderr
    if case != "exists":
        assert not (out / "config.json").exists()  # refused before anything was written


# ---------------------------------------------------------------------- the pipeline (trl)


def _needs_trl() -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")


def _mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and "steps" not in p.parts
    }


@pytest.mark.slow
def test_fedvpa_align_end_to_end(stage1: Path, tiny: Path, tmp_path: Path) -> None:
    _needs_trl()
    out = tmp_path / "align"
    args = ["--num-prompts", "6", "--eval-prompts", "5", "--max-new-tokens", "6"]
    args += ["--dpo-steps", "2", "--batch-size", "4", "--judge-pairs", "80", "--examples", "3"]
    args += ["--best-of-n", "3"]
    result = fedvpa("align", str(stage1), "--out", str(out), "--policy", str(tiny), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter/adapter_config.json", "adapter/z_projection.pt", "groups.json"):
        assert (out / name).is_file(), name
    for name in ("samples.jsonl", "labels.jsonl", "eval_generations.jsonl", "report.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (
        config["options"]["dpo_steps"] == 2
        and config["seeds"]["prompts"] != config["seeds"]["stage1"]
    )
    groups = json.loads((out / "groups.json").read_text())
    assert set(groups) == {"harmless", "helpful"} and len(groups["helpful"]) == 8
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 2 * 6  # one pair per prompt and group
    # the default: 4 samples, the contested pair, which both groups label (same two replies)
    for index in range(6):
        pairs = [{r["chosen"], r["rejected"]} for r in labels if r["index"] == index]
        assert len(pairs) == 2 and (pairs[0] == pairs[1] or None in pairs[0] | pairs[1])
    assert all(len(r["scores"]) == 4 for r in labels)
    report = json.loads((out / "report.json").read_text())
    assert set(report["win_rate_vs_base"]) == {"harmless", "helpful"}
    assert {s["judge"] for s in report["switching"]} == {"harmless", "helpful"}
    assert report["win_rate_vs_base"]["helpful"]["harmless"]["n"] == 5
    assert len(report["examples"]) == 3
    md = (out / "report.md").read_text()
    assert "proxies" in md and "Switching effect" in md and "refusal" in md.lower()
    # it names the rule used (it once called the contested pair "best and worst")
    assert report["labels"]["pair_rule"] == "contested"
    assert "differs most between the groups" in md and "best and worst" not in md
    # best-of-n: each group's pick is one of its prompt's 3 base candidates, the argmax of
    # the selector's scores under that group's z, evaluated like every other variant
    bon = [json.loads(x) for x in (out / "best_of_n.jsonl").read_text().splitlines()]
    assert len(bon) == 5 and all(len(r["candidates"]) == 3 for r in bon)
    for row in bon:
        for group, pick in row["choice"].items():
            assert row["scores"][group][pick] == max(row["scores"][group])
    assert all("bon:helpful" in rates for rates in report["win_rate_vs_base"].values())
    assert {s["judge"] for s in report["switching_best_of_n"]} == {"harmless", "helpful"}
    assert report["best_of_n"]["n"] == 3 and "best-of-n, z_helpful" in md
    # the aligned policy is what `fedvpa generate --adapter` reads
    gen = fedvpa(
        "generate", str(stage1), "--prefer", "helpful", "--policy", str(tiny), "--adapter",
        str(out / "adapter"), "--max-new-tokens", "4", "w1 w2",
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]


def test_a_killed_align_resumes_without_redoing_finished_steps(
    stage1: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_trl()
    out = tmp_path / "align"
    logged: list[str] = []
    run_align(stage1, _opts(tiny), out=out, stop_after="labels", log=logged.append)
    assert [s for s in STEPS if (out / "steps" / f"{s}.json").is_file()] == [
        "prompts", "samples", "labels",
    ]  # fmt: skip
    before = _mtimes(out)

    # killed in the middle of DPO: nothing of the step is left, the finished steps stay
    def killed(state: object) -> None:
        (out / ".dpo-partial").mkdir()
        raise KeyboardInterrupt

    original = align_module.STEP_FUNCTIONS["dpo"]
    monkeypatch.setitem(align_module.STEP_FUNCTIONS, "dpo", killed)
    with pytest.raises(KeyboardInterrupt):
        run_align(stage1, _opts(tiny), out=out, resume=True, log=logged.append)
    assert not (out / "adapter").exists() and not (out / "steps" / "dpo.json").exists()
    monkeypatch.setitem(align_module.STEP_FUNCTIONS, "dpo", original)

    # without --resume an existing folder is refused
    with pytest.raises(ConfigError, match="--resume"):
        run_align(stage1, _opts(tiny), out=out, log=logged.append)

    logged.clear()
    run_align(stage1, _opts(tiny), out=out, resume=True, log=logged.append)
    skipped = [line.split("]")[0][1:] for line in logged if "skipped" in line]
    assert skipped == ["prompts", "samples", "labels"]
    after = _mtimes(out)
    for name in ("prompts.jsonl", "samples.jsonl", "labels.jsonl", "groups.json"):
        assert after[name] == before[name], f"{name} was rewritten"
    assert (out / "report.json").is_file()

    # a changed DPO option redoes DPO and what depends on it, nothing upstream or aside
    logged.clear()
    run_align(stage1, _opts(tiny, dpo_steps=3), out=out, resume=True, log=logged.append)
    skipped = [line.split("]")[0][1:] for line in logged if "skipped" in line]
    assert skipped == ["prompts", "samples", "labels", "feddpo", "judges", "best-of-n"]
    assert json.loads((out / "dpo.json").read_text())["steps"] == 3

    # everything finished: a resume does nothing
    logged.clear()
    run_align(stage1, _opts(tiny, dpo_steps=3), out=out, resume=True, log=logged.append)
    assert sum("skipped" in line for line in logged) == len(STEPS)
    assert os.listdir(out / "steps") and not list(out.glob(".*.json.*"))


def test_best_and_worst_of_n_samples_train_dpo(stage1: Path, tiny: Path, tmp_path: Path) -> None:
    """--samples-per-prompt 3: three replies per DPO prompt, per group the selector's best and
    worst under that group's z become DPO's chosen and rejected, and the report says so."""
    _needs_trl()
    out = tmp_path / "align"
    opts = _opts(tiny, samples_per_prompt=3, pair_rule="best-worst", best_of_n=0)
    run_align(stage1, opts, out=out, log=lambda _: None)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(len(s["replies"]) == 3 for s in samples)
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 2 * 6
    for row in labels:
        if row["chosen"] is not None:
            assert row["scores"][row["chosen"]] == max(row["scores"])
            assert row["scores"][row["rejected"]] == min(row["scores"])
    from transformers import AutoTokenizer

    pairs = align_module.z_preferences(out, AutoTokenizer.from_pretrained(tiny))
    usable = [r for r in labels if r["chosen"] is not None]
    assert len(pairs) == len(usable)
    for pair, row in zip(pairs, usable, strict=True):
        replies = samples[row["index"]]["replies"]
        assert (pair.chosen, pair.rejected) == (replies[row["chosen"]], replies[row["rejected"]])
    report = json.loads((out / "report.json").read_text())
    assert report["labels"]["samples_per_prompt"] == 3
    assert "best and worst of 3 samples" in (out / "report.md").read_text()
    # the option is part of the samples' fingerprint: the paper's pair resamples
    logged: list[str] = []
    opts = _opts(tiny, samples_per_prompt=2, best_of_n=0)
    run_align(stage1, opts, out=out, resume=True, log=logged.append)
    skipped = [line.split("]")[0][1:] for line in logged if "skipped" in line]
    assert skipped == ["prompts", "feddpo", "judges", "best-of-n"]


def test_openers_put_cautious_and_compliant_replies_in_the_dpo_samples(
    stage1: Path, tiny: Path, tmp_path: Path
) -> None:
    """--openers 1 of 4 samples: per prompt two free replies, one continued from a cautious
    opener and one from a compliant one, all labelled like free ones; the option is part of the
    samples' fingerprint, so turning it off resamples."""
    _needs_trl()
    out = tmp_path / "align"
    opts = _opts(tiny, samples_per_prompt=4, pair_rule="contested", openers=1, best_of_n=0)
    run_align(stage1, opts, out=out, stop_after="labels", log=lambda _: None)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    for row in samples:
        assert row["sources"] == ["free", "free", "cautious", "compliant"]
        cautious, compliant = row["replies"][2], row["replies"][3]
        assert any(cautious.startswith(o) for o in sampling_module.CAUTIOUS_OPENERS)
        assert any(compliant.startswith(o) for o in sampling_module.COMPLIANT_OPENERS)
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 2 * 6 and all(len(r["scores"]) == 4 for r in labels)
    logged: list[str] = []
    run_align(
        stage1, replace_opts(opts, openers=0), out=out, resume=True, stop_after="samples",
        log=logged.append,
    )  # fmt: skip
    assert not any("[samples] done before" in line for line in logged)
    again = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all("sources" not in row and len(row["replies"]) == 4 for row in again)


def test_contested_each_labels_two_pairs_per_prompt_and_dpo_trains_on_both(
    stage1: Path, tiny: Path, tmp_path: Path
) -> None:
    _needs_trl()
    from transformers import AutoTokenizer

    out = tmp_path / "align"
    opts = _opts(tiny, samples_per_prompt=4, pair_rule="contested-each", openers=1, best_of_n=0)
    run_align(stage1, opts, out=out, stop_after="labels", log=lambda _: None)
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    groups = sorted({r["group"] for r in labels})
    assert len(labels) == 2 * 6 * len(groups)  # per group and prompt: a free and an opener pair
    for r in labels:
        if r["chosen"] is not None:
            assert {r["chosen"], r["rejected"]} == ({0, 1} if r["part"] == "free" else {2, 3})
    usable = sum(r["chosen"] is not None for r in labels)
    assert len(align_module.z_preferences(out, AutoTokenizer.from_pretrained(tiny))) == usable


@pytest.mark.slow
def test_a_file_data_sets_judges_learn_from_the_pairs_no_client_holds(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relabeled HH-RLHF cannot be generated afresh: its judges use the file's pairs that no
    stage-1 client holds, which the selector and the policy never saw."""
    _needs_trl()
    from test_alignment_rank import make_stage1_run

    from fedvpa.alignment.feddpo import stage1_partition
    from fedvpa.alignment.judges import pair_key
    from fedvpa.data.readers import read_pairs
    from fedvpa.data.schema import PreferencePair

    data = tmp_path / "pairs.jsonl"
    # the embedded data labels every pair under both types; relabeled HH-RLHF holds each pair
    # once, under one type: keep the first 400 pairs as harmless users label them, the next 400
    # as helpful users do
    by_key: dict[tuple[str, str, str], dict[str, PreferencePair]] = {}
    for p in read_pairs("synthetic-2", seed=5):
        by_key.setdefault(pair_key(p), {})[str(p.user_type)] = p
    keys = list(by_key)[:800]
    picked = [by_key[k]["harmless"] for k in keys[:400]] + [
        by_key[k]["helpful"] for k in keys[400:]
    ]
    rows = [
        {"prompt": p.prompt, "chosen": p.response_a if p.preferred == 0 else p.response_b,
         "rejected": p.response_b if p.preferred == 0 else p.response_a, "type": p.user_type}
        for p in picked
    ]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = make_stage1_run(
            tmp_path / "run", monkeypatch, data=str(data), **{"data-format": "generic"}
        )
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("".join(f"Question {i}: how do I fix a door?\n" for i in range(11)))
        out = tmp_path / "align"
        run_align(
            run_dir, _opts(tiny, prompts_file=str(prompts)), out=out, stop_after="judges",
            log=lambda _: None,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    judges = json.loads((out / "judges.json").read_text())
    assert set(judges) == {"harmless", "helpful"}
    assert {j["source"] for j in judges.values()} == {"held-out file pairs"}
    held = {
        pair_key(p)
        for c in stage1_partition(run_dir).clients
        for p in (*c.context, *c.train, *c.test)
    }
    left = 800 - len(held)  # the file's pairs in no client: the judges' whole pool
    trained = sum(j["train_pairs"] for j in judges.values())
    assert 0 < left < 800 and round(0.8 * left) - 2 <= trained <= round(0.8 * left) + 2


def test_a_killed_steps_work_folder_is_removed_when_the_step_runs_again(tmp_path: Path) -> None:
    """A DPO or FedDPO step killed mid-way leaves its work folder (trainer checkpoints) in the
    align folder; the next attempt removes it instead of keeping one copy per killed attempt,
    and leaves other steps' folders and the finished adapter alone."""
    from fedvpa.alignment.files import fresh_work_dir, replace_dir

    stale = tmp_path / ".dpo-killed"
    (stale / "trainer").mkdir(parents=True)
    (stale / "trainer" / "checkpoint.bin").write_bytes(b"x" * 10)
    other = tmp_path / ".feddpo-running"
    other.mkdir()
    work = fresh_work_dir(tmp_path, ".dpo-")
    assert work.is_dir() and work.name.startswith(".dpo-")
    assert not stale.exists() and other.is_dir()
    (work / "adapter").mkdir()
    (work / "adapter" / "weights").write_text("new")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights").write_text("old")
    replace_dir(work / "adapter", tmp_path / "adapter")
    assert (tmp_path / "adapter" / "weights").read_text() == "new"
    assert not (work / "adapter").exists()
