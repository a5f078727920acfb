"""Stage-2 commands (``fedvpa rank``, ``fedvpa generate``), registered on the main ``fedvpa``
app by :func:`register` so that ``cli.py`` (edited by several people) changes by two lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

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
    typer.Option("--context", help="A user's labelled pairs (.jsonl): z by the stage-1 encoder."),
]
MixOpt = Annotated[
    str | None, typer.Option("--mix", help="Convex mix of groups, e.g. helpful=0.3,harmless=0.7.")
]
ZFileOpt = Annotated[
    Path | None, typer.Option("--z", help="A z of d floats (.npy or a JSON list).")
]


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
