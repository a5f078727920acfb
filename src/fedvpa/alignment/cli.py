"""Stage-2 commands (``fedvpa align``, ``rank``, ``generate``), registered on the main ``fedvpa``
app by :func:`register` so that ``cli.py`` (edited by several people) changes by two lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fedvpa.alignment.options import QUICK
from fedvpa.errors import ConfigError

RunDirArg = Annotated[
    Path, typer.Argument(help="A finished stage-1 run folder (`fedvpa run --out`).")
]
PreferOpt = Annotated[
    str | None,
    typer.Option("--prefer", help="A stage-1 group: a user type (helpful) or proto-K."),
]
ContextOpt = Annotated[
    Path | None,
    typer.Option(
        "--context",
        help="A user's labelled pairs (.jsonl): z as stage 1 read an unseen client's context.",
    ),
]
MixOpt = Annotated[
    str | None, typer.Option("--mix", help="Convex mix of groups, e.g. helpful=0.3,harmless=0.7.")
]
ZFileOpt = Annotated[
    Path | None, typer.Option("--z", help="A z of d floats (.npy or a JSON list).")
]


# From the profile itself, so the help cannot drift from it (it said 40 DPO steps after the
# profile had moved to 80). The time is measured, README "Stage 2".
QUICK_HELP = (
    f"The CPU profile: {QUICK['num_prompts']} prompts, {QUICK['samples_per_prompt']} samples "
    f"each, {QUICK['dpo_steps']} DPO steps, {QUICK['max_new_tokens']} new tokens; 8-18 min on "
    "2 CPU cores with the 135M policy."
)


def register(app: typer.Typer, options: Callable[[typer.Context], Any]) -> None:
    """Add the stage-2 commands to ``app``; ``options(ctx)`` gives the global ``--seed/--out``."""

    @app.command("rank")
    def rank(
        ctx: typer.Context,
        run_dir: RunDirArg,
        prompt: Annotated[str, typer.Option("--prompt", help="The prompt the replies answer.")],
        candidates: Annotated[
            Path,
            typer.Option("--candidates", help="Replies: .jsonl (strings or {text}) or one a line."),
        ],
        prefer: PreferOpt = None,
        context: ContextOpt = None,
        mix: MixOpt = None,
        z_file: ZFileOpt = None,
        n: Annotated[int, typer.Option("-n", help="Show the best n (0 = all).")] = 0,
    ) -> None:
        """Best-of-n: rank candidate replies with the z-conditioned stage-1 selector (no policy
        training); score = the selector's reward under z, win = mean pairwise P(preferred)."""
        from fedvpa.alignment.preferences import choose_z, open_stage1_run
        from fedvpa.alignment.rank import rank_candidates, read_candidates, render_ranking

        opts = options(ctx)
        if n < 0:
            raise ConfigError(f"must be >= 0, got {n}", field="-n")
        run = open_stage1_run(run_dir)
        texts = read_candidates(candidates)
        chosen = choose_z(run, prefer=prefer, context=context, mix=mix, z_file=z_file)
        ranked = rank_candidates(run, chosen.z, prompt, texts)
        typer.echo(render_ranking(ranked, chosen.label, top=n or None))
        if opts.out:
            opts.out.mkdir(parents=True, exist_ok=True)
            result = {
                "z": chosen.z.tolist(),
                "label": chosen.label,
                "prompt": prompt,
                "ranking": [r.__dict__ for r in ranked],
            }
            (opts.out / "rank.json").write_text(json.dumps(result, indent=2))

    @app.command("generate")
    def generate(
        ctx: typer.Context,
        run_dir: RunDirArg,
        prompt: Annotated[str, typer.Argument(help="The user's request.")],
        prefer: PreferOpt = None,
        context: ContextOpt = None,
        mix: MixOpt = None,
        z_file: ZFileOpt = None,
        max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
        temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
        policy: Annotated[
            str | None,
            typer.Option(help="A local HF causal-LM folder (default: SmolLM2-135M-Instruct)."),
        ] = None,
        adapter: Annotated[
            Path | None,
            typer.Option(help="A `fedvpa align` output: z projection (+ LoRA adapter)."),
        ] = None,
    ) -> None:
        """Generate a reply with the z-injected policy under the chosen preference."""
        from fedvpa.alignment.generate import UNTRAINED_NOTE, condition_policy, generate_reply
        from fedvpa.alignment.policy import load_policy
        from fedvpa.alignment.preferences import choose_z, open_stage1_run

        opts = options(ctx)
        if max_new_tokens < 1 or temperature < 0:
            raise ConfigError("need max-new-tokens >= 1 and temperature >= 0", field="generate")
        run = open_stage1_run(run_dir)
        chosen = choose_z(run, prefer=prefer, context=context, mix=mix, z_file=z_file)
        loaded = load_policy(policy)
        conditioned = condition_policy(loaded, run.latent_dim, adapter)
        reply = generate_reply(
            conditioned,
            chosen.z,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=opts.seed,
        )
        typer.echo(f"[{chosen.label}; policy {loaded.source}]")
        if not conditioned.z_has_effect:
            typer.echo(UNTRAINED_NOTE)
        typer.echo(reply)

    @app.command("align")
    def align(
        ctx: typer.Context,
        run_dir: RunDirArg,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", help="Align folder (default RUN_DIR/align; overrides the global --out)."
            ),
        ] = None,
        seed: Annotated[
            int | None, typer.Option("--seed", help="Seed (default: the global --seed).")
        ] = None,
        quick: Annotated[
            bool,
            typer.Option(help=QUICK_HELP),
        ] = False,
        resume: Annotated[
            bool, typer.Option(help="Continue an align folder: finished steps are skipped.")
        ] = False,
        policy: Annotated[
            str | None,
            typer.Option(help="A local HF causal-LM folder (default: SmolLM2-135M-Instruct)."),
        ] = None,
        groups: Annotated[
            str | None,
            typer.Option(help="Groups to align, e.g. helpful,harmless (default: the user types)."),
        ] = None,
        z_files: Annotated[
            list[Path] | None,
            typer.Option("--z", help="Extra group: a z file (.npy or JSON list); repeatable."),
        ] = None,
        prompts: Annotated[
            Path | None,
            typer.Option(
                "--prompts",
                help="Held-out prompts: .jsonl(.gz) with 'prompt' (or HH-RLHF 'chosen'), or one "
                "a line (default: generated afresh for the embedded data).",
            ),
        ] = None,
        prompts_risky: Annotated[
            bool,
            typer.Option(
                help="Count every --prompts prompt as risky (e.g. HH-RLHF harmless-base)."
            ),
        ] = False,
        num_prompts: Annotated[int | None, typer.Option(help="DPO prompts.")] = None,
        eval_prompts: Annotated[int | None, typer.Option(help="Evaluation prompts.")] = None,
        max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per reply.")] = None,
        temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
        samples_per_prompt: Annotated[
            int | None,
            typer.Option(
                help="Replies sampled per DPO prompt (default 4): 2 = the paper's pair, "
                "labelled by the selector; n > 2 = the pair comes from the n by --pair-rule."
            ),
        ] = None,
        pair_rule: Annotated[
            str | None,
            typer.Option(
                help="With n > 2 samples: contested (default: one pair per prompt, the one "
                "whose preference differs most between the groups, labelled by each group), "
                "best-worst (each group's best and worst) or contested-each (with --openers: "
                "the contested pair among the free samples and the one among the openers)."
            ),
        ] = None,
        openers: Annotated[
            int | None,
            typer.Option(
                help="Of the samples per DPO prompt, this many continue a cautious opener "
                "(\"I'm sorry, but I can't help with that.\") and as many a compliant one "
                '("Sure, here is how to do it."); the selector labels them like the rest. '
                "0 = free samples only."
            ),
        ] = None,
        dpo_steps: Annotated[int | None, typer.Option(help="DPO optimiser steps.")] = None,
        sft_weight: Annotated[
            float,
            typer.Option(
                help="Add the chosen replies' token NLL to the DPO loss with this weight "
                "(RPO-style; 0 = plain DPO)."
            ),
        ] = 0.0,
        batch_size: Annotated[int | None, typer.Option(help="DPO pairs per step.")] = None,
        lr: Annotated[float | None, typer.Option("--lr", help="DPO learning rate.")] = None,
        gen_batch_size: Annotated[int | None, typer.Option(help="Prompts per generate().")] = None,
        judge_pairs: Annotated[
            int | None, typer.Option(help="Generated pairs per user type for the judges.")
        ] = None,
        examples: Annotated[int, typer.Option(help="Example generations in the report.")] = 5,
        threads: Annotated[
            int,
            typer.Option(
                help="Torch CPU threads (0 = every usable core; 1 is fastest beside other heavy "
                "work on a 2-core machine)."
            ),
        ] = 0,
        stop_after: Annotated[
            str | None, typer.Option(help="Stop after this step (prompts ... report).")
        ] = None,
        feddpo: Annotated[
            bool,
            typer.Option(
                help="Also train the monolithic FedDPO baseline on Flower (clients' own pairs, "
                "averaged LoRA) and evaluate it on the same prompts."
            ),
        ] = False,
        feddpo_clients: Annotated[
            int, typer.Option(help="FedDPO clients (all train each round).")
        ] = 10,
        feddpo_rounds: Annotated[int | None, typer.Option(help="FedDPO rounds.")] = None,
        feddpo_local_steps: Annotated[
            int | None, typer.Option(help="FedDPO local DPO steps per client and round.")
        ] = None,
        best_of_n: Annotated[
            int | None,
            typer.Option(
                help="Best-of-n candidates per evaluation prompt, picked by the selector under "
                "each group's z (quick 4, full 8; 0 = off)."
            ),
        ] = None,
    ) -> None:
        """Stage 2: sample replies, label them with the frozen selector per group z, train a
        z-conditioned LoRA policy with DPO, and report win rates and switching."""
        from fedvpa.alignment.align import run_align
        from fedvpa.alignment.options import AlignOptions

        opts = options(ctx)
        folder = run_align(
            run_dir,
            AlignOptions(
                policy=policy,
                groups=tuple(g.strip() for g in groups.split(",") if g.strip()) if groups else None,
                z_files=tuple(str(p) for p in z_files or ()),
                prompts_file=str(prompts) if prompts else None,
                prompts_risky=prompts_risky,
                num_prompts=num_prompts,
                eval_prompts=eval_prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                samples_per_prompt=samples_per_prompt,
                pair_rule=pair_rule,
                openers=openers,
                dpo_steps=dpo_steps,
                sft_weight=sft_weight,
                batch_size=batch_size,
                learning_rate=lr,
                gen_batch_size=gen_batch_size,
                judge_pairs=judge_pairs,
                examples=examples,
                seed=opts.seed if seed is None else seed,
                quick=quick,
                threads=threads,
                feddpo=feddpo,
                feddpo_clients=feddpo_clients,
                feddpo_rounds=feddpo_rounds,
                feddpo_local_steps=feddpo_local_steps,
                best_of_n=best_of_n,
            ),
            out=out or (opts.out if opts.out else None),
            resume=resume,
            stop_after=stop_after,
            log=typer.echo,
        )
        typer.echo(f"align folder: {folder}")
        if (folder / "report.md").is_file() and stop_after in (None, "report"):
            typer.echo(f"report: {folder / 'report.md'}")
