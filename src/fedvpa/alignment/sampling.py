"""Sampling replies from the policy: seeded batches (a reply does not depend on what ran before
it), optionally conditioned on ``z``, optionally continuing a given opener (``--openers``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedvpa.alignment.prompts import render_prompt

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
