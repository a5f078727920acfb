"""``fedvpa align``'s options, its two profiles (quick for the CPU, full for a GPU) and their
checks: one-line errors naming the flag, before any step runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from fedvpa.errors import ConfigError

# how DPO pairs are drawn from more than two samples per prompt (see pairs.pair_labels)
PAIR_RULES = ("best-worst", "contested", "contested-each")


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
            raise ConfigError(f"must be >= 1, got {getattr(filled, name)}", field=flag_name(name))
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


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")
