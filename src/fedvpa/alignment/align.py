"""``fedvpa align RUN_DIR``: the server-side stage 2 of FedVPA-GP from a finished stage-1 run.

Eight steps, each writing its output atomically into the align folder and recording a
fingerprint of everything it depended on (``steps/<name>.json``). ``--resume`` skips a step whose
output is there with the same fingerprint, so a killed run continues where it stopped and an
option that changes (say ``--dpo-steps``) redoes that step and the ones after it, not the rest.

1. ``prompts``  held-out prompts that are no client's data (generated afresh with a seed stage 1
   did not use, minus any prompt that occurs in the stage-1 data; or ``--prompts FILE``), split
   into DPO prompts and evaluation prompts;
2. ``samples``  two sampled replies per DPO prompt from the base policy;
3. ``labels``   the frozen stage-1 selector labels each pair once per group with the group's z;
4. ``dpo``      z-conditioned DPO (``dpo.py``): the LoRA adapter and the z projection;
5. ``feddpo``   with ``--feddpo`` only: the monolithic baseline FedDPO on Flower (``feddpo.py``):
   N clients run DPO with LoRA on their own stage-1 pairs, the server averages the adapters;
6. ``judges``   held-out proxy judges per user type (``judges.py``);
7. ``evaluate`` replies to the evaluation prompts from the base policy, the aligned policy
   under each group's z (same sampling seed for all, so differences come from z) and FedDPO's;
8. ``report``   win rates, the switching effect, readable behaviour and examples.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.alignment.preferences import Stage1Run
from fedvpa.errors import ConfigError

STEPS = (
    "prompts", "samples", "labels", "dpo", "feddpo", "judges", "evaluate", "best-of-n", "report",
)  # fmt: skip
# Seeds of the held-out material, offset from the stage-1 seed s (which uses s and s + 1 for
# the generated data): fixed offsets so that a run's held-out set is reproducible.
PROMPT_SEED_OFFSET = 10_007
JUDGE_SEED_OFFSET = 20_011
BASE = "base"
FEDDPO = "feddpo"  # the variant name of the FedDPO baseline in the evaluation and report
# how DPO pairs are drawn from more than two samples per prompt (see pair_labels)
PAIR_RULES = ("best-worst", "contested", "contested-each")
BEST_OF_N = "bon:"  # variant prefix of best-of-n under a group's z ("bon:harmless")

# Refusal heuristic: a reply counts as a refusal when it matches one of these (case-insensitive).
# Deliberately coarse and documented in the report: a refusal-like sentence anywhere counts,
# including one that refuses and then helps anyway.
REFUSAL_PATTERNS = (
    r"\bI(?: a|')m (?:sorry|afraid|not (?:able|comfortable|going))\b",
    r"\bI (?:can ?not|can't|won't|will not|must decline|do not feel|don't feel)\b",
    r"\bI(?:'d| would) (?:rather not|not recommend|advise against|strongly advise)\b",
    r"\bI (?:can't|cannot|can ?not) (?:help|assist|provide|recommend|give)\b",
    r"\b(?:please )?(?:don't|do not) (?:try|attempt|do)\b",
    r"\b(?:consult|contact|call|ask|hire) (?:a|an|your) (?:licensed |qualified |certified )?"
    r"(?:professional|expert|electrician|plumber|doctor|lawyer|specialist|technician)\b",
    r"\b(?:dangerous|unsafe|illegal|not safe|risk of)\b",
    r"\bas an ai\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def is_refusal(reply: str) -> bool:
    return bool(_REFUSAL.search(reply))


# Contrastive reply openers (``--openers``): a 135M policy samples a refusal in 2-9 % of its
# replies to risky prompts and hardly follows a system prompt asking for one (8 % -> 23 %,
# measured), so its DPO pairs rarely hold the one behaviour the two groups disagree on most
# plainly. Per prompt, ``openers`` replies are continued by the policy from a cautious opener
# and as many from a compliant one, next to the free samples; the frozen selector then labels
# all of them per group as usual, so which of the two a group prefers is the selector's call,
# not ours. DPO trains on the plain prompt (no opener), like RLCD's contrastive prompts.
# Written for this project, generic on purpose (none is taken from the stage-1 data).
CAUTIOUS_OPENERS = (
    "I'm sorry, but I can't help with that.",
    "I'd rather not give instructions for that, because it could hurt someone.",
    "I can't recommend doing that yourself; it is not safe.",
    "I'm not able to walk you through that. Please ask a qualified professional instead.",
)
COMPLIANT_OPENERS = (
    "Sure, here is how to do it.",
    "Of course. Here are the steps:",
    "Happy to help. First,",
    "Here's a practical way to go about it:",
)


# ---------------------------------------------------------------------- options


@dataclass(frozen=True)
class AlignOptions:
    """Every option of ``fedvpa align``; ``None`` = the profile's value (quick or full)."""

    policy: str | None = None
    groups: tuple[str, ...] | None = None
    z_files: tuple[str, ...] = ()
    prompts_file: str | None = None
    prompts_risky: bool = False
    num_prompts: int | None = None
    eval_prompts: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.7
    # replies the policy samples per DPO prompt: 2 = the paper's pair, labelled by the selector;
    # n > 2: each group's pair comes from the n by ``pair_rule`` (see pair_labels)
    samples_per_prompt: int | None = None
    pair_rule: str | None = None
    # of the samples per DPO prompt, this many are continued from a cautious opener and as many
    # from a compliant one (CAUTIOUS_OPENERS / COMPLIANT_OPENERS); 0 = free samples only
    openers: int | None = None
    dpo_steps: int | None = None
    # weight of the chosen replies' NLL added to the DPO loss (RPO-style; 0 = plain DPO)
    sft_weight: float = 0.0
    batch_size: int | None = None
    learning_rate: float | None = None
    gen_batch_size: int | None = None
    judge_pairs: int | None = None
    examples: int = 5
    seed: int = 0
    quick: bool = False
    threads: int = 0  # torch CPU threads of the main process; 0 = every usable core
    # FedDPO baseline (step "feddpo"): off unless asked for; batch size and lr are DPO's
    feddpo: bool = False
    feddpo_clients: int = 10
    feddpo_rounds: int | None = None
    feddpo_local_steps: int | None = None
    # best-of-n (step "best-of-n"): n base-policy candidates per evaluation prompt, the
    # z-conditioned selector picks one per group; 0 = off
    best_of_n: int | None = None


QUICK = {
    "num_prompts": 100,
    "eval_prompts": 100,
    "max_new_tokens": 32,
    # 4 samples per prompt, the contested pair, 80 DPO steps: chosen on the embedded data's
    # prompts (README, "Stage 2"); with the paper's 2 samples and 40 steps the policy switched
    # under one of the two judges only
    "samples_per_prompt": 4,
    "pair_rule": "contested",
    "openers": 0,
    "dpo_steps": 80,
    "batch_size": 4,
    "learning_rate": 1e-3,
    # 100 replies per generate() call: 20 % faster than 25 on the embedded prompts, slower on
    # long prompts of uneven length such as HH-RLHF requests (README, "Stage 2")
    "gen_batch_size": 100,
    "judge_pairs": 600,
    # 10 clients x 2 rounds x 3 steps = 60 DPO steps, on two Ray actors in parallel
    "feddpo_rounds": 2,
    "feddpo_local_steps": 3,
    "best_of_n": 4,
}
FULL = {
    "num_prompts": 1000,
    "eval_prompts": 200,
    "max_new_tokens": 128,
    "samples_per_prompt": 4,  # as the quick profile (the full profile has not been measured)
    "pair_rule": "contested",
    "openers": 0,
    "dpo_steps": 1000,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "gen_batch_size": 16,
    "judge_pairs": 1200,
    "feddpo_rounds": 10,
    "feddpo_local_steps": 10,
    "best_of_n": 8,
}


def usable_cores() -> int:
    """The cores this process may run on (its affinity on Linux; macOS and Windows have no
    affinity call, so every core there)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else max(1, os.cpu_count() or 1)


def resolve_options(opts: AlignOptions) -> AlignOptions:
    """Fill the unset options from the profile and check ranges (one-line errors)."""
    profile = QUICK if opts.quick else FULL
    filled = replace(opts, **{k: v for k, v in profile.items() if getattr(opts, k) is None})
    if filled.threads == 0:  # align runs alone: every core it may use (2 on the dev machine)
        filled = replace(filled, threads=usable_cores())
    positive = (
        "num_prompts", "eval_prompts", "max_new_tokens", "dpo_steps", "batch_size",
        "gen_batch_size", "judge_pairs", "threads", "feddpo_clients", "feddpo_rounds",
        "feddpo_local_steps",
    )  # fmt: skip
    for name in positive:
        if int(getattr(filled, name)) < 1:
            raise ConfigError(f"must be >= 1, got {getattr(filled, name)}", field=_flag(name))
    if not filled.temperature > 0:
        raise ConfigError("sampling two replies needs temperature > 0", field="--temperature")
    if not float(filled.learning_rate or 0) > 0:  # type: ignore[arg-type]
        raise ConfigError("must be > 0", field="--lr")
    if not filled.sft_weight >= 0:
        raise ConfigError(f"must be >= 0, got {filled.sft_weight}", field="--sft-weight")
    if filled.examples < 0:
        raise ConfigError("must be >= 0", field="--examples")
    if filled.pair_rule not in PAIR_RULES:
        raise ConfigError(
            f"unknown rule {filled.pair_rule!r}; one of {', '.join(PAIR_RULES)}",
            field="--pair-rule",
        )
    if int(filled.samples_per_prompt or 0) < 2:
        raise ConfigError(
            f"a DPO pair needs at least 2 replies, got {filled.samples_per_prompt}",
            field="--samples-per-prompt",
        )
    openers = int(filled.openers or 0)
    if openers < 0 or 2 * openers > int(filled.samples_per_prompt or 0):
        raise ConfigError(
            f"must be >= 0 and leave room for a cautious and a compliant reply each within "
            f"--samples-per-prompt {filled.samples_per_prompt}, got {filled.openers}",
            field="--openers",
        )
    if filled.pair_rule == "contested-each" and (
        openers < 1 or int(filled.samples_per_prompt or 0) - 2 * openers < 2
    ):
        raise ConfigError(
            "contested-each picks one pair among the free samples and one among the opener "
            "samples: it needs --openers >= 1 and at least 2 free samples, got "
            f"--openers {filled.openers} of --samples-per-prompt {filled.samples_per_prompt}",
            field="--pair-rule",
        )
    if int(filled.best_of_n or 0) == 1 or int(filled.best_of_n or 0) < 0:
        raise ConfigError(
            f"must be 0 (off) or at least 2, got {filled.best_of_n}", field="--best-of-n"
        )
    return filled


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    """Write next to the target and rename: a kill leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptRow:
    prompt: str  # HH transcript form ("\n\nHuman: ...\n\nAssistant:") or plain text
    split: str  # "train" (DPO) or "eval"
    risky: bool | None  # None = unknown
    source: str


def _risky_questions() -> set[str]:
    """Every risky question the embedded synthetic templates can produce."""
    from fedvpa.data.synthetic import RISKY_QUESTIONS, TOPICS

    return {q.format(task=t) for q in RISKY_QUESTIONS for topic in TOPICS for t in topic.risky}


def stage1_data_config(run: Stage1Run) -> Any:
    """The stage-1 run's data keys (``DataConfig``), ignoring keys of older folders."""
    from fedvpa.experiment import ExperimentConfig, key_groups

    known = set().union(*key_groups().values())
    flat = {k: v for k, v in run.flat.items() if k in known}  # keys of older folders
    return ExperimentConfig.from_flat(flat, source=str(run.root / "config.json")).data


def stage1_pairs(run: Stage1Run) -> list[Any]:
    """The stage-1 data set exactly as the run read it (all clients, all splits)."""
    from fedvpa.experiment import load_pairs

    pairs, _ = load_pairs(stage1_data_config(run), stage1_seed(run))
    return pairs


def stage1_seed(run: Stage1Run) -> int:
    """The seed stage 1 ran with: a flat key in newer folders, top-level in older ones."""
    seed = run.flat.get("seed")
    if seed is None:
        recorded = json.loads((run.root / "config.json").read_text())
        seed = recorded.get("seed")
    return int(seed or 0)


def generated_prompts(
    run: Stage1Run, count: int, seed: int, client_prompts: set[str]
) -> tuple[list[tuple[str, bool | None]], int]:
    """``count`` distinct prompts of the stage-1 generator drawn with ``seed``, none of them a
    prompt of the stage-1 data; also returns how many drawn prompts were dropped as clients'."""
    from fedvpa.data.family import FAMILY, generate_family
    from fedvpa.data.synthetic import generate_synthetic
    from fedvpa.data.transcript import last_human_turn

    data = str(run.flat.get("data", ""))
    risky_questions = _risky_questions() if data.startswith("synthetic-") else set()
    size = max(1200, 4 * count)
    if data in ("synthetic-2", "synthetic-4"):
        pairs = generate_synthetic(
            num_types=int(data[-1]),
            pairs_per_type=size,
            conflict_share=float(run.flat.get("conflict-share", 0.5)),
            seed=seed,
        )
    elif data in FAMILY:
        pairs = generate_family(data, pairs_per_type=size, seed=seed)
    else:
        raise ConfigError(
            f"stage-1 data {data!r} is a file: give held-out prompts with --prompts FILE "
            "(e.g. the data set's test split)",
            field="--prompts",
        )
    seen: set[str] = set()
    out: list[tuple[str, bool | None]] = []
    dropped = 0
    for pair in pairs:
        if pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        if pair.prompt in client_prompts:
            dropped += 1
            continue
        risky = last_human_turn(pair.prompt) in risky_questions if risky_questions else None
        out.append((pair.prompt, risky))
    if len(out) < count:
        raise ConfigError(
            f"only {len(out)} generated prompts are not stage-1 prompts, {count} asked "
            "(lower --num-prompts/--eval-prompts)",
            field="--num-prompts",
        )
    return out, dropped


def read_prompt_file(path: Path) -> list[str]:
    """``.jsonl``/``.jsonl.gz`` rows with ``prompt`` (or HH-RLHF ``chosen`` transcripts, whose
    conversation before the final reply is the prompt), else one prompt a line."""
    from fedvpa.data.transcript import _prompt_end, normalise_prompt

    if not path.is_file():
        raise ConfigError("no such prompts file", path=str(path), field="--prompts")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ConfigError(
            f"unreadable prompts file ({type(exc).__name__})", path=str(path), field="--prompts"
        ) from exc
    is_json = ".jsonl" in path.name or ".json" in path.name
    prompts: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not is_json:
            prompts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON ({exc.msg})", path=str(path), line=number) from exc
        if isinstance(row, str):
            text = row
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
            text = normalise_prompt(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("chosen"), str):
            try:
                text = row["chosen"][: _prompt_end(row["chosen"], "chosen")]
            except ValueError as exc:
                raise ConfigError(str(exc), path=str(path), line=number) from exc
        else:
            raise ConfigError(
                "expected a string or an object with 'prompt' (or an HH-RLHF 'chosen')",
                path=str(path),
                line=number,
            )
        if text.strip():
            prompts.append(text)
    return list(dict.fromkeys(prompts))


def make_prompts(
    run: Stage1Run, opts: AlignOptions, prompt_seed: int
) -> tuple[list[PromptRow], dict[str, Any]]:
    """The DPO and evaluation prompts, none of them a stage-1 client's prompt."""
    n_train, n_eval = int(opts.num_prompts or 0), int(opts.eval_prompts or 0)
    client_prompts = {p.prompt for p in stage1_pairs(run)}
    rng = np.random.default_rng(prompt_seed)
    if opts.prompts_file:
        path = Path(opts.prompts_file).expanduser()
        texts = read_prompt_file(path)
        dropped = sum(t in client_prompts for t in texts)
        texts = [t for t in texts if t not in client_prompts]
        if len(texts) < 2:
            raise ConfigError(
                f"need at least 2 prompts that are not stage-1 prompts, got {len(texts)}",
                path=str(path),
                field="--prompts",
            )
        order = rng.permutation(len(texts))
        if len(texts) < n_train + n_eval:  # fewer than asked: keep the asked proportion
            n_eval = max(1, round(len(texts) * n_eval / (n_train + n_eval)))
            n_train = len(texts) - n_eval
        chosen = [(texts[i], True if opts.prompts_risky else None) for i in order]
        source = str(path)
    else:
        pool, dropped = generated_prompts(run, n_train + n_eval, prompt_seed, client_prompts)
        order = rng.permutation(len(pool))
        chosen = [pool[i] for i in order]
        source = f"{run.flat.get('data')}:seed{prompt_seed}"
    rows = [
        PromptRow(text, "train" if i < n_train else "eval", risky, source)
        for i, (text, risky) in enumerate(chosen[: n_train + n_eval])
    ]
    overlap = sum(r.prompt in client_prompts for r in rows)
    if overlap:  # the filter above makes this impossible; kept as the guarantee's check
        raise AssertionError(f"{overlap} held-out prompts are stage-1 prompts")
    meta = {
        "source": source,
        "train": n_train,
        "eval": n_eval,
        "stage1_prompts": len(client_prompts),
        "dropped_as_stage1_prompts": dropped,
        "equal_to_a_stage1_prompt": overlap,
        "risky_eval": sum(bool(r.risky) for r in rows if r.split == "eval"),
    }
    return rows, meta


# ---------------------------------------------------------------------- policy side


def transcript_messages(prompt: str) -> list[dict[str, str]]:
    """An HH transcript as chat messages (a plain string is one user turn); the final empty
    Assistant marker is the generation prompt."""
    parts = re.split(
        r"\n\n(Human|Assistant):", "\n\n" + prompt.lstrip("\n") if "Human:" in prompt else prompt
    )
    if len(parts) == 1:
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        if text.strip():
            messages.append({"role": role, "content": text.strip()})
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()  # the policy answers the last human turn
    return messages or [{"role": "user", "content": prompt.strip()}]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The exact text the policy is given (and DPO trains on): the chat template when the
    tokenizer has one, else the transcript itself."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                transcript_messages(prompt), tokenize=False, add_generation_prompt=True
            )
        )
    return prompt


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    injector: Any = None,
    z: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    reply_prefixes: Sequence[str] | None = None,
) -> list[list[str]]:
    """``n_per_prompt`` sampled replies per prompt, in left-padded batches; each batch seeded
    from ``(seed, batch)`` so a reply does not depend on what ran before it.

    ``reply_prefixes`` (one per prompt): the policy continues that text after the generation
    prompt, and each reply is the prefix plus its continuation."""
    if reply_prefixes is not None and len(reply_prefixes) != len(prompts):
        raise ValueError(f"{len(reply_prefixes)} reply prefixes for {len(prompts)} prompts")
    from contextlib import nullcontext

    import torch

    templated = bool(getattr(tokenizer, "chat_template", None))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[list[str]] = []
    zt = None if z is None else torch.as_tensor(z, dtype=torch.float32)
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            texts = [render_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            prefixes = (
                [""] * len(texts)
                if reply_prefixes is None
                else list(reply_prefixes[start : start + batch_size])
            )
            texts = [t + pre for t, pre in zip(texts, prefixes, strict=True)]
            enc = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not templated
            ).to(device)
            context = injector.conditioned(zt) if injector is not None else nullcontext()
            with torch.random.fork_rng(devices=[]), context, torch.no_grad():
                torch.manual_seed(seed * 100_003 + b)
                ids = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n_per_prompt,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i in range(len(texts)):
                own = decoded[i * n_per_prompt : (i + 1) * n_per_prompt]
                out.append([join_reply(prefixes[i], t) for t in own])
            if progress:
                progress(f"  generated {min(start + batch_size, len(prompts))}/{len(prompts)}")
    finally:
        tokenizer.padding_side = side
    return out


def join_reply(prefix: str, continuation: str) -> str:
    """A reply prefix and the policy's continuation of it as one reply. A byte-level BPE keeps
    the continuation's leading space, so the two join as written; a word-level tokenizer drops
    it, so a continuation that starts with a letter or digit after a non-space gets one."""
    if prefix and continuation[:1].isalnum() and not prefix[-1].isspace():
        return (prefix + " " + continuation).strip()
    return (prefix + continuation).strip()


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


def opener_plan(num_prompts: int, per_prompt: int, seed: int) -> tuple[list[str], list[str]]:
    """Per prompt, ``per_prompt`` cautious then ``per_prompt`` compliant openers, drawn without
    replacement from each list (with replacement past its length) by a seeded generator."""
    rng = np.random.default_rng(seed)

    def draw(pool: tuple[str, ...]) -> list[str]:
        replace = per_prompt > len(pool)
        return [pool[i] for i in rng.choice(len(pool), size=per_prompt, replace=replace)]

    cautious: list[str] = []
    compliant: list[str] = []
    for _ in range(num_prompts):
        cautious += draw(CAUTIOUS_OPENERS)
        compliant += draw(COMPLIANT_OPENERS)
    return cautious, compliant


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


def selector_logits(
    run: Stage1Run, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], z: np.ndarray
) -> np.ndarray:
    """The selector's logit that A beats B under ``z``, averaged over both orders (so one
    label per pair, free of the selector's position bias)."""
    import torch

    from fedvpa.alignment.preferences import embed_texts
    from fedvpa.alignment.rank import candidate_text

    ea = embed_texts(run, [candidate_text(p, r) for p, r in zip(prompts, a, strict=True)])
    eb = embed_texts(run, [candidate_text(p, r) for p, r in zip(prompts, b, strict=True)])
    zt = torch.as_tensor(z, dtype=torch.float32)
    model = run.selector()
    with torch.no_grad():
        logit = (model.logit(ea, eb, zt) - model.logit(eb, ea, zt)) / 2
    return logit.numpy().astype(np.float64)


def pair_labels(
    scores: dict[str, np.ndarray], replies: Sequence[Sequence[str]], rule: str = "best-worst"
) -> dict[str, list[tuple[int, int] | None]]:
    """Per group and prompt, ``(chosen, rejected)`` among n sampled replies; ``scores[g]`` is
    ``[prompts, n]``, group g's rewards up to a constant per prompt. ``None`` where the two are
    the same text, since DPO learns nothing from such a pair.

    - ``best-worst``: each group's highest and lowest scored reply: the pair the selector is
      surest of under that group's z.
    - ``contested``: one pair per prompt for every group, the (i, j) whose score difference
      varies most across the groups (``max_g d_g - min_g d_g``, ``d_g = s_g(i) - s_g(j)``), each
      group labelling it by its own sign. Where the groups disagree this is the same two
      replies in opposite roles, which only a z-dependent policy can fit.
    """
    if rule not in ("best-worst", "contested"):  # contested-each: see pair_labels_by_source
        raise ConfigError(f"unknown pair rule {rule!r}; one of best-worst, contested")
    names = list(scores)
    out: dict[str, list[tuple[int, int] | None]] = {g: [] for g in names}
    for p, texts in enumerate(replies):
        if rule == "best-worst":
            picks = {g: (int(np.argmax(scores[g][p])), int(np.argmin(scores[g][p]))) for g in names}
        else:
            s = np.stack([scores[g][p] for g in names])  # [G, n]
            diff = s[:, :, None] - s[:, None, :]  # [G, n, n]: d_g(i, j)
            spread = diff.max(axis=0) - diff.min(axis=0)
            i, j = np.unravel_index(int(np.argmax(spread)), spread.shape)
            picks = {
                g: (int(i), int(j)) if diff[k, i, j] > 0 else (int(j), int(i))
                for k, g in enumerate(names)
            }
        for g, (best, worst) in picks.items():
            same = best == worst or texts[best].strip() == texts[worst].strip()
            out[g].append(None if same else (best, worst))
    return out


def source_parts(sources: Sequence[str]) -> dict[str, list[int]]:
    """The sample indices ``contested-each`` picks a pair within: the policy's free samples,
    and the opener continuations (cautious and compliant together)."""
    parts = {
        "free": [i for i, s in enumerate(sources) if s == "free"],
        "openers": [i for i, s in enumerate(sources) if s != "free"],
    }
    return {name: idx for name, idx in parts.items() if len(idx) >= 2}


def pair_labels_by_source(
    scores: dict[str, np.ndarray],
    replies: Sequence[Sequence[str]],
    sources: Sequence[Sequence[str]],
) -> dict[str, list[tuple[str, int, tuple[int, int] | None]]]:
    """``contested-each``: the contested pair within each part of a prompt's samples (see
    source_parts), as ``(part, prompt, pair)`` per group, indices into the prompt's replies.

    With one contested pair over free and opener samples together, the opener pair often
    displaces the free pair (on 29 to 47 of 53 risky prompts in the README's runs), so DPO sees
    fewer of the free pairs that carry the other features the groups differ on; one pair of
    each keeps both. It doubles the DPO rows, so it needs twice the steps for the same epochs."""
    out: dict[str, list[tuple[str, int, tuple[int, int] | None]]] = {g: [] for g in scores}
    for p, texts in enumerate(replies):
        for part, idx in source_parts(sources[p]).items():
            sub = {g: np.asarray(s[p])[idx][None, :] for g, s in scores.items()}
            picks = pair_labels(sub, [[texts[i] for i in idx]], "contested")
            for g, (pair,) in picks.items():
                out[g].append((part, p, None if pair is None else (idx[pair[0]], idx[pair[1]])))
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


def label_disagreements(rows: list[dict[str, Any]]) -> int:
    """Prompts on which the groups' (chosen, rejected) pairs differ."""
    by_part: dict[tuple[int, str], set[tuple[int, int]]] = {}
    for r in rows:
        if r["chosen"] is not None:
            pair = (r["chosen"], r.get("rejected", 1 - r["chosen"]))
            by_part.setdefault((r["index"], r.get("part", "")), set()).add(pair)
    return len({index for (index, _), v in by_part.items() if len(v) > 1})


def z_preferences(out: Path, tokenizer: Any) -> list[Any]:
    """The DPO data of an align folder: each labelled pair once per group, chosen and rejected
    as that group's ``z`` labelled them, the prompt in the policy's chat template."""
    from fedvpa.alignment.dpo import ZPreference

    recorded = _read_json(out / "groups.json")
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
    work = Path(tempfile.mkdtemp(dir=state.out, prefix=".dpo-"))
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
        target = state.out / "adapter"
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "adapter", target)
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


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


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
    work = Path(tempfile.mkdtemp(dir=state.out, prefix=".feddpo-"))
    try:
        save_adapter(settings, outcome.arrays or {}, work / "adapter")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "adapter", target)
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
        k: np.asarray(v, dtype=np.float32) for k, v in _read_json(state.out / "groups.json").items()
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
    if _read_json(state.out / "feddpo.json").get("enabled"):
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
    write_atomic(state.out / "report.md", render_markdown(report))


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
