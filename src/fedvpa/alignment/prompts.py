"""Stage 2's held-out prompts (no stage-1 client's data) and how a prompt is given to the policy.

Prompts come from the stage-1 generator under a seed stage 1 did not use, minus every prompt of
the stage-1 data, or from a file (``--prompts``); either way they are split into DPO prompts and
evaluation prompts. ``render_prompt`` is the exact text the policy sees and DPO trains on.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.alignment.options import AlignOptions
from fedvpa.alignment.preferences import Stage1Run, stage1_pairs
from fedvpa.errors import ConfigError


@dataclass(frozen=True)
class PromptRow:
    prompt: str  # HH transcript form ("\n\nHuman: ...\n\nAssistant:") or plain text
    split: str  # "train" (DPO) or "eval"
    risky: bool | None  # None = unknown
    source: str


def _risky_questions() -> set[str]:
    """Every risky question the embedded synthetic templates can produce."""
    from fedvpa.data.synthetic_text import RISKY_QUESTIONS, TOPICS

    return {q.format(task=t) for q in RISKY_QUESTIONS for topic in TOPICS for t in topic.risky}


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
