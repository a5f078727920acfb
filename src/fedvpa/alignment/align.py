"""``fedvpa align RUN_DIR``: the server-side stage 2 of FedVPA-GP from a finished stage-1 run.

This module runs the steps in order and resumes them; what a step is made of lives in its own
module (``options``, ``prompts``, ``sampling``, ``pairs``, ``files``, ``refusals``, ``dpo``,
``feddpo``, ``judges``, ``report``). Nine steps, each writing its output atomically into the
align folder and recording a fingerprint of everything it depended on (``steps/<name>.json``).
``--resume`` skips a step whose output is there with the same fingerprint, so a killed run
continues where it stopped and an option that changes (say ``--dpo-steps``) redoes that step
and the ones after it, not the rest.

1. ``prompts``  held-out prompts that are no client's data (generated afresh with a seed stage 1
   did not use, minus any prompt that occurs in the stage-1 data; or ``--prompts FILE``), split
   into DPO prompts and evaluation prompts;
2. ``samples``  sampled replies per DPO prompt from the base policy (``samples-per-prompt``);
3. ``labels``   the frozen stage-1 selector labels each pair once per group with the group's z;
4. ``dpo``      z-conditioned DPO (``dpo.py``): the LoRA adapter and the z projection;
5. ``feddpo``   with ``--feddpo`` only: the monolithic baseline FedDPO on Flower (``feddpo.py``):
   N clients run DPO with LoRA on their own stage-1 pairs, the server averages the adapters;
6. ``judges``   held-out proxy judges per user type (``judges.py``);
7. ``evaluate`` replies to the evaluation prompts from the base policy, the aligned policy
   under each group's z (same sampling seed for all, so differences come from z) and FedDPO's;
8. ``best-of-n`` n base-policy candidates per evaluation prompt, the selector picks one per
   group (no training);
9. ``report``   win rates, the switching effect, readable behaviour and examples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.alignment.files import (
    fingerprint,
    fresh_work_dir,
    read_json,
    read_jsonl,
    replace_dir,
    write_json,
    write_jsonl,
)
from fedvpa.alignment.options import AlignOptions, resolve_options
from fedvpa.alignment.pairs import (
    label_disagreements,
    pair_labels,
    pair_labels_by_source,
    selector_logits,
)
from fedvpa.alignment.preferences import Stage1Run, stage1_pairs, stage1_seed
from fedvpa.alignment.prompts import make_prompts, render_prompt
from fedvpa.alignment.sampling import generate_batched, opener_plan
from fedvpa.errors import ConfigError
from fedvpa.protocol.run_folder import atomic_write_text

STEPS = (
    "prompts", "samples", "labels", "dpo", "feddpo", "judges", "evaluate", "best-of-n", "report",
)  # fmt: skip
# Seeds of the held-out material, offset from the stage-1 seed s (which uses s and s + 1 for
# the generated data): fixed offsets so that a run's held-out set is reproducible.
PROMPT_SEED_OFFSET = 10_007
JUDGE_SEED_OFFSET = 20_011
BASE = "base"
FEDDPO = "feddpo"  # the variant name of the FedDPO baseline in the evaluation and report
BEST_OF_N = "bon:"  # variant prefix of best-of-n under a group's z ("bon:harmless")


# ---------------------------------------------------------------------- the pipeline


@dataclass
class AlignState:
    """What the steps share within one invocation (loaded lazily, once)."""

    run: Stage1Run
    opts: AlignOptions
    out: Path
    seeds: dict[str, int]
    log: Callable[[str], None]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    _policy: Any = None

    def policy(self) -> Any:
        from fedvpa.alignment.policy import load_policy

        if self._policy is None:
            self._policy = load_policy(self.opts.policy)
        return self._policy


def stage1_identity(run: Stage1Run) -> str:
    """The selector and groups a step depended on: a digest of the run's final.json."""
    return hashlib.sha256((run.method_dir / "final.json").read_bytes()).hexdigest()[:16]


def step_fingerprints(state: AlignState) -> dict[str, str]:
    """Each step's inputs, chained, so a change upstream redoes everything downstream."""
    o, s = state.opts, state.seeds
    ident = stage1_identity(state.run)
    fp: dict[str, str] = {}
    prompts_digest = None
    if o.prompts_file and Path(o.prompts_file).expanduser().is_file():
        data = Path(o.prompts_file).expanduser().read_bytes()
        prompts_digest = hashlib.sha256(data).hexdigest()[:16]  # the file's content, not name
    fp["prompts"] = fingerprint(
        ["prompts", ident, o.prompts_file, prompts_digest, o.prompts_risky, o.num_prompts,
         o.eval_prompts, s["prompts"]]
    )  # fmt: skip
    gen = [o.policy or "smollm2", o.max_new_tokens, o.temperature, o.gen_batch_size]
    # samples-per-prompt enters only when it is not the paper's 2, so that folders written
    # before the option keep their fingerprints and resume without redoing their steps
    per_prompt = [] if o.samples_per_prompt == 2 else [o.samples_per_prompt]
    if o.openers:  # likewise: entered only when on
        per_prompt.append(f"openers={o.openers}")
    fp["samples"] = fingerprint(["samples", fp["prompts"], *gen, *per_prompt, s["samples"]])
    rule = [] if o.samples_per_prompt == 2 else [o.pair_rule]  # 2 samples make one pair only
    fp["labels"] = fingerprint(["labels", fp["samples"], ident, o.groups, o.z_files, *rule])
    sft = [f"sft={o.sft_weight}"] if o.sft_weight else []  # entered only when on
    fp["dpo"] = fingerprint(
        ["dpo", fp["labels"], o.dpo_steps, o.batch_size, o.learning_rate, *sft, s["dpo"]]
    )
    fp["feddpo"] = fingerprint(
        ["feddpo", ident, o.policy or "smollm2", o.feddpo, o.feddpo_clients, o.feddpo_rounds,
         o.feddpo_local_steps, o.batch_size, o.learning_rate, s["dpo"]]
    )  # fmt: skip
    fp["judges"] = fingerprint(["judges", fp["prompts"], o.judge_pairs, s["judges"]])
    fp["evaluate"] = fingerprint(["evaluate", fp["dpo"], fp["feddpo"], *gen, s["evaluate"]])
    fp["best-of-n"] = fingerprint(
        ["best-of-n", fp["prompts"], ident, o.groups, o.z_files, *gen, o.best_of_n,
         s["best_of_n"]]
    )  # fmt: skip
    fp["report"] = fingerprint(
        ["report", fp["evaluate"], fp["judges"], fp["best-of-n"], o.examples, s["report"]]
    )
    return fp


STEP_OUTPUTS = {
    "prompts": ("prompts.jsonl", "prompts.json"),
    "samples": ("samples.jsonl",),
    "labels": ("groups.json", "labels.jsonl"),
    "dpo": ("adapter", "dpo.json"),
    "feddpo": ("feddpo.json",),
    "judges": ("judges.json",),
    "evaluate": ("eval_generations.jsonl",),
    "best-of-n": ("best_of_n.json",),
    "report": ("report.json", "report.md"),
}


def step_is_done(out: Path, step: str, fp: str) -> bool:
    marker = out / "steps" / f"{step}.json"
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("fingerprint") == fp and all(
        (out / name).exists() for name in STEP_OUTPUTS[step]
    )


def _mark_done(out: Path, step: str, fp: str, seconds: float) -> None:
    write_json(
        out / "steps" / f"{step}.json",
        {"step": step, "fingerprint": fp, "seconds": round(seconds, 2), "at": time.time()},
    )


def _groups(state: AlignState) -> dict[str, np.ndarray]:
    """The chosen groups' z: user types by default (the judges' names), or ``--groups``, plus
    any ``--z`` files (named by their stem)."""
    from fedvpa.alignment.preferences import _unknown_group, preference_groups, z_from_file

    known = preference_groups(state.run)
    if state.opts.groups:
        names = list(state.opts.groups)
        for name in names:
            if name not in known:
                raise _unknown_group(name, known)
    else:
        names = [n for n, g in known.items() if g.kind == "user-type"] or list(known)
    groups = {n: known[n].z.astype(np.float32) for n in names}
    for path in state.opts.z_files:
        name = f"z:{Path(path).stem}"
        groups[name] = z_from_file(path, state.run.latent_dim)
    return groups


def _step_prompts(state: AlignState) -> None:
    rows, meta = make_prompts(state.run, state.opts, state.seeds["prompts"])
    write_jsonl(state.out / "prompts.jsonl", [asdict(r) for r in rows])
    write_json(state.out / "prompts.json", meta)
    state.log(
        f"  {meta['train']} DPO + {meta['eval']} evaluation prompts from {meta['source']} "
        f"({meta['dropped_as_stage1_prompts']} drawn prompts dropped as stage-1 prompts)"
    )


def _prompts(state: AlignState, split: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(state.out / "prompts.jsonl") if r["split"] == split]


def policy_samples(
    state: AlignState,
    prompts: Sequence[str],
    n_per_prompt: int,
    seed: int,
    sequences_per_call: int,
    reply_prefixes: Sequence[str] | None = None,
) -> list[list[str]]:
    """The base policy's replies with the run's sampling options (no adapter, no ``z``)."""
    policy = state.policy()
    return generate_batched(
        policy.model,
        policy.tokenizer,
        prompts,
        n_per_prompt=n_per_prompt,
        max_new_tokens=int(state.opts.max_new_tokens or 0),
        temperature=state.opts.temperature,
        seed=seed,
        batch_size=max(1, sequences_per_call // n_per_prompt),
        progress=state.log,
        reply_prefixes=reply_prefixes,
    )


def _step_samples(state: AlignState) -> None:
    prompts = [r["prompt"] for r in _prompts(state, "train")]
    n = int(state.opts.samples_per_prompt or 2)
    free = n - 2 * int(state.opts.openers or 0)
    replies: list[list[str]] = [[] for _ in prompts]
    if free:
        # the same number of sequences per generate() call as with pairs
        calls = 2 * int(state.opts.gen_batch_size or 1)
        replies = policy_samples(state, prompts, free, state.seeds["samples"], calls)
    rows: list[dict[str, Any]] = [
        {"prompt": p, "replies": r} for p, r in zip(prompts, replies, strict=True)
    ]
    k = int(state.opts.openers or 0)
    if k:
        rows = _with_openers(state, prompts, rows, n - 2 * k, k)
    write_jsonl(state.out / "samples.jsonl", rows)


def _with_openers(
    state: AlignState,
    prompts: list[str],
    rows: list[dict[str, Any]],
    free: int,
    k: int,
) -> list[dict[str, Any]]:
    """Keep ``free`` free samples per prompt and add ``k`` cautious and ``k`` compliant
    continuations; each row records where its replies came from (``sources``)."""
    cautious, compliant = opener_plan(len(prompts), k, state.seeds["samples"])
    steered: dict[str, list[list[str]]] = {}
    for offset, (name, openers) in enumerate((("cautious", cautious), ("compliant", compliant))):
        state.log(f"  continuing {name} openers")
        flat = policy_samples(
            state,
            [p for p in prompts for _ in range(k)],
            1,
            state.seeds["samples"] + offset + 1,
            2 * int(state.opts.gen_batch_size or 1),
            reply_prefixes=openers,
        )
        steered[name] = [[r[0] for r in flat[i * k : (i + 1) * k]] for i in range(len(prompts))]
    out = []
    for i, row in enumerate(rows):
        replies = row["replies"][:free] + steered["cautious"][i] + steered["compliant"][i]
        sources = ["free"] * free + ["cautious"] * k + ["compliant"] * k
        out.append({"prompt": row["prompt"], "replies": replies, "sources": sources})
    return out


def _step_labels(state: AlignState) -> None:
    groups = _groups(state)
    samples = read_jsonl(state.out / "samples.jsonl")
    prompts = [s["prompt"] for s in samples]
    replies = [s["replies"] for s in samples]
    rows: list[dict[str, Any]] = []
    if state.opts.samples_per_prompt == 2:
        # the paper's pair: one label per group from the pairwise logit over both orders
        first, second = [r[0] for r in replies], [r[1] for r in replies]
        for name, z in groups.items():
            logits = selector_logits(state.run, prompts, first, second, z)
            for i, logit in enumerate(logits):
                tie = first[i].strip() == second[i].strip()
                chosen = None if tie else (0 if logit > 0 else 1)
                rows.append(
                    {
                        "index": i,
                        "group": name,
                        "chosen": chosen,
                        "rejected": None if chosen is None else 1 - chosen,
                        "p_first": float(1 / (1 + np.exp(-logit))),
                    }
                )
    else:
        from fedvpa.alignment.rank import best_of_n

        scores = best_of_n(state.run, prompts, replies, groups)  # every reply embedded once
        picked: dict[str, list[tuple[str, int, tuple[int, int] | None]]]
        if state.opts.pair_rule == "contested-each":
            sources = [s.get("sources") or ["free"] * len(s["replies"]) for s in samples]
            picked = pair_labels_by_source(scores, replies, sources)
        else:
            by_prompt = pair_labels(scores, replies, str(state.opts.pair_rule))
            picked = {g: [("", i, pair) for i, pair in enumerate(v)] for g, v in by_prompt.items()}
        for name, chosen_pairs in picked.items():
            for part, i, pair in chosen_pairs:
                rows.append(
                    {
                        "index": i,
                        **({"part": part} if part else {}),
                        "group": name,
                        "chosen": None if pair is None else pair[0],
                        "rejected": None if pair is None else pair[1],
                        "scores": [round(float(v), 4) for v in scores[name][i]],
                    }
                )
    write_json(
        state.out / "groups.json",
        {n: [float(v) for v in z] for n, z in groups.items()},
    )
    write_jsonl(state.out / "labels.jsonl", rows)
    usable = [r for r in rows if r["chosen"] is not None]
    disagree = label_disagreements(rows)
    state.log(
        f"  {len(usable)} labelled pairs over {len(groups)} groups; the groups disagree on "
        f"{disagree} of {len(samples)} prompts"
    )


def z_preferences(out: Path, tokenizer: Any) -> list[Any]:
    """The DPO data of an align folder: each labelled pair once per group, chosen and rejected
    as that group's ``z`` labelled them, the prompt in the policy's chat template."""
    from fedvpa.alignment.dpo import ZPreference

    recorded = read_json(out / "groups.json")
    groups = {k: np.asarray(v, dtype=np.float32) for k, v in recorded.items()}
    samples = read_jsonl(out / "samples.jsonl")
    pairs: list[ZPreference] = []
    for row in read_jsonl(out / "labels.jsonl"):
        if row["chosen"] is None:
            continue
        sample = samples[row["index"]]
        # folders written before samples-per-prompt have no "rejected": their pair is (0, 1)
        rejected_index = row.get("rejected", 1 - row["chosen"])
        chosen, rejected = sample["replies"][row["chosen"]], sample["replies"][rejected_index]
        prompt = render_prompt(tokenizer, sample["prompt"])
        pairs.append(
            ZPreference(prompt, chosen, rejected, [float(v) for v in groups[row["group"]]])
        )
    return pairs


def _step_dpo(state: AlignState) -> None:
    import torch

    from fedvpa.alignment.dpo import build_z_dpo, save_z_policy

    policy = state.policy()
    pairs = z_preferences(state.out, policy.tokenizer)
    if not pairs:
        raise ConfigError("no labelled pair with two different replies to train on", field="dpo")
    order = np.random.default_rng(state.seeds["dpo"]).permutation(len(pairs))
    # pairs the steps will never reach cost reference log-probabilities for nothing
    needed = int(state.opts.dpo_steps or 1) * int(state.opts.batch_size or 1)
    pairs = [pairs[i] for i in order[:needed]]
    work = fresh_work_dir(state.out, ".dpo-")
    try:
        torch.manual_seed(state.seeds["dpo"])
        trainer, injector = build_z_dpo(
            policy.model,
            policy.tokenizer,
            state.run.latent_dim,
            pairs,
            work / "trainer",
            max_steps=int(state.opts.dpo_steps or 1),
            batch_size=int(state.opts.batch_size or 1),
            learning_rate=float(state.opts.learning_rate or 0),
            seed=state.seeds["dpo"],
            sft_weight=state.opts.sft_weight,
        )
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        save_z_policy(trainer, injector, work / "adapter")
        replace_dir(work / "adapter", state.out / "adapter")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state._policy = None  # LoRA was injected into the loaded model: later steps reload it
    history = [
        {k: v for k, v in h.items() if isinstance(v, int | float)}
        for h in trainer.state.log_history
    ]
    write_json(
        state.out / "dpo.json",
        {
            "pairs": len(pairs),
            "steps": int(trainer.state.global_step),
            "epochs": float(trainer.state.epoch or 0),
            "train_seconds": round(seconds, 1),
            "train_loss": float(result.training_loss),
            "sft_weight": state.opts.sft_weight,
            "projection_norm": float(injector.proj.weight.detach().norm()),
            "z_scale": injector.z_scale,
            "log": history,
        },
    )
    state.log(
        f"  {trainer.state.global_step} DPO steps on {len(pairs)} pairs in {seconds:.0f} s "
        f"(loss {result.training_loss:.3f}); adapter and z projection in {state.out / 'adapter'}"
    )


def feddpo_settings(state: AlignState) -> Any:
    from fedvpa.alignment.feddpo import FedDPOSettings

    o = state.opts
    return FedDPOSettings(
        stage1_run=str(state.run.root),
        policy=o.policy,
        clients=o.feddpo_clients,
        rounds=int(o.feddpo_rounds or 1),
        local_steps=int(o.feddpo_local_steps or 1),
        batch_size=int(o.batch_size or 1),
        learning_rate=float(o.learning_rate or 0),
        seed=state.seeds["dpo"],
        threads=1,  # per client process: Ray gives each actor one CPU (runtime.DEFAULT_BACKEND)
    )


def _step_feddpo(state: AlignState) -> None:
    """The monolithic baseline, trained on Flower from the clients' own pairs (not from the
    selector's labels): one adapter for everybody, evaluated on the same prompts."""
    target = state.out / "feddpo-adapter"
    if not state.opts.feddpo:
        if target.exists():
            shutil.rmtree(target)
        write_json(state.out / "feddpo.json", {"enabled": False})
        state.log("  off (--feddpo runs it)")
        return
    from fedvpa.alignment.feddpo import (
        adapter_bytes,
        choose_clients,
        initial_adapter,
        save_adapter,
        stage1_partition,
    )
    from fedvpa.federation.feddpo_app import run_feddpo

    settings = feddpo_settings(state)
    clients = choose_clients(stage1_partition(state.run.root), settings.clients, settings.seed)
    initial = initial_adapter(settings)
    t0 = time.perf_counter()
    outcome = run_feddpo(
        settings,
        [c.client_id for c in clients],
        initial,
        flwr_home=state.out / ".flwr",
        log=state.log,
    )
    seconds = time.perf_counter() - t0
    work = fresh_work_dir(state.out, ".feddpo-")
    try:
        save_adapter(settings, outcome.arrays or {}, work / "adapter")
        replace_dir(work / "adapter", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    types: dict[str, int] = {}
    for c in clients:
        types[c.user_type] = types.get(c.user_type, 0) + 1
    write_json(
        state.out / "feddpo.json",
        {
            "enabled": True,
            "settings": asdict(settings),
            "clients": [asdict(c) for c in clients],
            "clients_per_type": types,
            "rounds": outcome.rounds,
            "replies_per_round": {str(k): v for k, v in sorted(outcome.replies.items())},
            "dpo_steps": settings.clients * settings.rounds * settings.local_steps,
            "adapter_bytes_per_client_per_round": adapter_bytes(initial),
            "seconds": round(seconds, 1),
        },
    )
    losses = ", ".join(f"{r.get('train-loss', float('nan')):.3f}" for r in outcome.rounds)
    state.log(
        f"  {len(clients)} clients ({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}), "
        f"{settings.rounds} rounds in {seconds:.0f} s; mean client loss per round {losses}; "
        f"adapter in {target}"
    )


def _step_judges(state: AlignState) -> None:
    from fedvpa.alignment.judges import (
        GENERATED,
        HELD_OUT_FILE_PAIRS,
        held_out_file_pairs,
        is_generated,
        judge_pairs_source,
        train_judges,
    )
    from fedvpa.alignment.preferences import embed_texts

    if is_generated(str(state.run.flat.get("data", ""))):
        source = GENERATED
        pairs = judge_pairs_source(
            state.run.flat, int(state.opts.judge_pairs or 1), state.seeds["judges"]
        )
        held = stage1_pairs(state.run)  # the whole generated stage-1 data set
    else:  # a file: its pairs that no stage-1 client holds (none can be generated afresh)
        from fedvpa.alignment.feddpo import stage1_partition

        source = HELD_OUT_FILE_PAIRS
        held = [
            p
            for c in stage1_partition(state.run.root).clients
            for p in (*c.context, *c.train, *c.test)
        ]
        pairs = held_out_file_pairs(stage1_pairs(state.run), held)
        state.log(f"  {len(pairs)} pairs of the data file are in no stage-1 client")
    seen = {(p.prompt, p.response_a, p.response_b) for p in held}
    align_prompts = {r["prompt"] for r in read_jsonl(state.out / "prompts.jsonl")}
    pairs = [p for p in pairs if p.prompt not in align_prompts]  # the policy's prompts too
    judges = train_judges(
        pairs,
        lambda texts: embed_texts(state.run, texts).numpy(),
        exclude=seen,
        seed=state.seeds["judges"],
        source=source,
    )
    write_json(state.out / "judges.json", {k: j.to_json() for k, j in judges.items()})
    for j in judges.values():
        state.log(
            f"  judge {j.user_type}: {j.train_pairs} pairs, held-out accuracy "
            f"{j.heldout_accuracy:.3f}"
        )


def _step_evaluate(state: AlignState) -> None:
    from fedvpa.alignment.generate import condition_policy

    groups = {
        k: np.asarray(v, dtype=np.float32) for k, v in read_json(state.out / "groups.json").items()
    }
    prompts = [r["prompt"] for r in _prompts(state, "eval")]
    policy = state.policy()
    conditioned = condition_policy(policy, state.run.latent_dim, state.out / "adapter")
    model, injector = conditioned.policy.model, conditioned.injector
    common = {
        "n_per_prompt": 1,
        "max_new_tokens": int(state.opts.max_new_tokens or 0),
        "temperature": state.opts.temperature,
        "seed": state.seeds["evaluate"],  # the same for every variant: paired comparisons
        "batch_size": int(state.opts.gen_batch_size or 1),
    }
    rows: list[dict[str, Any]] = []
    state.log("  base policy (adapter off, no z)")
    with model.disable_adapter():
        base = generate_batched(model, policy.tokenizer, prompts, **common, progress=state.log)
    rows += [{"index": i, "variant": BASE, "reply": r[0]} for i, r in enumerate(base)]
    for name, z in groups.items():
        state.log(f"  aligned policy under z_{name}")
        replies = generate_batched(
            model, policy.tokenizer, prompts, **common, injector=injector, z=z,
            progress=state.log,
        )  # fmt: skip
        rows += [{"index": i, "variant": name, "reply": r[0]} for i, r in enumerate(replies)]
    injector.detach()
    state._policy = None
    if read_json(state.out / "feddpo.json").get("enabled"):
        from peft import PeftModel

        state.log("  FedDPO policy (averaged adapter, no z)")
        plain = state.policy()
        model = PeftModel.from_pretrained(plain.model, str(state.out / "feddpo-adapter"))
        model.eval()
        replies = generate_batched(
            model, plain.tokenizer, prompts, **common, progress=state.log
        )  # fmt: skip
        rows += [{"index": i, "variant": FEDDPO, "reply": r[0]} for i, r in enumerate(replies)]
        state._policy = None
    write_jsonl(state.out / "eval_generations.jsonl", rows)


def _step_best_of_n(state: AlignState) -> None:
    """Best-of-n without training: n replies of the base policy per evaluation prompt, and per
    group the one the frozen selector scores highest under that group's ``z``. The report
    compares it with the base policy's reply like every other variant."""
    from fedvpa.alignment.rank import best_of_n

    n = int(state.opts.best_of_n or 0)
    if n == 0:
        write_json(state.out / "best_of_n.json", {"enabled": False})
        return
    groups = _groups(state)
    prompts = [r["prompt"] for r in _prompts(state, "eval")]
    state.log(f"  {n} base-policy candidates per prompt")
    candidates = policy_samples(
        state, prompts, n, state.seeds["best_of_n"], int(state.opts.gen_batch_size or 1)
    )
    scores = best_of_n(state.run, prompts, candidates, groups)
    choice = {name: np.argmax(s, axis=1) for name, s in scores.items()}
    rows = [
        {
            "index": i,
            "candidates": candidates[i],
            "choice": {name: int(c[i]) for name, c in choice.items()},
            "scores": {name: [round(float(v), 4) for v in s[i]] for name, s in scores.items()},
        }
        for i in range(len(prompts))
    ]
    write_jsonl(state.out / "best_of_n.jsonl", rows)
    names = list(groups)
    agree = sum(len({int(choice[g][i]) for g in names}) == 1 for i in range(len(prompts)))
    write_json(
        state.out / "best_of_n.json",
        {"enabled": True, "n": n, "groups": names, "same_choice": agree, "prompts": len(prompts)},
    )
    state.log(f"  best-of-{n}: the groups pick the same reply on {agree} of {len(prompts)} prompts")


def _step_report(state: AlignState) -> None:
    from fedvpa.alignment.report import build_report, render_markdown

    report = build_report(
        state.out, state.run, seed=state.seeds["report"], examples=state.opts.examples
    )
    write_json(state.out / "report.json", report)
    atomic_write_text(state.out / "report.md", render_markdown(report))


STEP_FUNCTIONS: dict[str, Callable[[AlignState], None]] = {
    "prompts": _step_prompts,
    "samples": _step_samples,
    "labels": _step_labels,
    "dpo": _step_dpo,
    "feddpo": _step_feddpo,
    "judges": _step_judges,
    "evaluate": _step_evaluate,
    "best-of-n": _step_best_of_n,
    "report": _step_report,
}


def align_seeds(stage1_seed: int, seed: int) -> dict[str, int]:
    """Every seed of the run, recorded in config.json; the held-out ones are offset from the
    stage-1 seed so they never equal a seed stage 1 used for its data (s, s + 1)."""
    return {
        "stage1": stage1_seed,
        "align": seed,
        "prompts": stage1_seed + PROMPT_SEED_OFFSET + seed,
        "judges": stage1_seed + JUDGE_SEED_OFFSET + seed,
        "samples": seed,
        "dpo": seed,
        "evaluate": seed + 1,
        "best_of_n": seed + 2,
        "report": seed,
    }


def check_policy_and_prompts(opts: AlignOptions, prefix: str = "--") -> None:
    """The inputs that need no stage-1 run: the policy is a causal LM (the packaged SmolLM2 is
    there) and the prompts file exists. ``prefix`` names the flag (``--stage2-`` in compare)."""
    from fedvpa.alignment.policy import DEFAULT_POLICY, check_causal_lm, smollm2_gguf

    if opts.policy is None or opts.policy == DEFAULT_POLICY:
        smollm2_gguf()  # the package is there (converted on first load)
    else:
        check_causal_lm(Path(opts.policy).expanduser())
    if opts.prompts_file and not Path(opts.prompts_file).expanduser().is_file():
        raise ConfigError("no such prompts file", path=opts.prompts_file, field=f"{prefix}prompts")


def run_align(
    run_dir: str | Path,
    opts: AlignOptions,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    stop_after: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or resume) the pipeline; returns the align folder. Every bad input is checked and
    refused (one-line ``ConfigError``) before the first step writes anything."""
    import torch

    from fedvpa.alignment.preferences import open_stage1_run

    opts = resolve_options(opts)
    if stop_after is not None and stop_after not in STEPS:
        raise ConfigError(
            f"unknown step {stop_after!r}; steps: {', '.join(STEPS)}", field="--stop-after"
        )
    run = open_stage1_run(run_dir)
    folder = Path(out).expanduser() if out else run.root / "align"
    check_policy_and_prompts(opts)
    seeds = align_seeds(stage1_seed(run), opts.seed)
    state = AlignState(run, opts, folder, seeds, log)
    _groups(state)  # unknown group, wrong-size z: refused now, not after sampling
    if opts.feddpo:  # too few seen clients: refused now, not after the z-conditioned DPO
        from fedvpa.alignment.feddpo import choose_clients, stage1_partition

        choose_clients(stage1_partition(run.root), opts.feddpo_clients, seeds["dpo"])
    if (folder / "config.json").exists() and not resume:
        raise ConfigError(
            "align folder already exists: continue it with --resume, or choose --out",
            path=str(folder),
        )
    torch.set_num_threads(opts.threads)
    folder.mkdir(parents=True, exist_ok=True)
    fps = step_fingerprints(state)
    write_json(
        folder / "config.json",
        {
            "stage1_run": str(run.root),
            "stage1_method": run.method,
            "stage1_final_digest": stage1_identity(run),
            "options": asdict(opts),
            "seeds": seeds,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
            "steps": list(STEPS),
            "dpo_beta": 0.1,
            "fingerprints": fps,
        },
    )
    for step in STEPS:
        if resume and step_is_done(folder, step, fps[step]):
            log(f"[{step}] done before, skipped")
            state.skipped.append(step)
        else:
            log(f"[{step}]")
            t0 = time.perf_counter()
            STEP_FUNCTIONS[step](state)
            state.seconds[step] = time.perf_counter() - t0
            _mark_done(folder, step, fps[step], state.seconds[step])
            state.ran.append(step)
            log(f"[{step}] {state.seconds[step]:.1f} s")
        if step == stop_after:
            break
    return folder
