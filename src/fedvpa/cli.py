"""The ``fedvpa`` command.

Every command takes ``--seed`` and ``--out``; bad input ends with one line on stderr naming the
file, line and field, and exit code 2, before anything already written is touched.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fedvpa.errors import FedvpaInputError
from fedvpa.federation.environment import FLOWER_ENV

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_runtime_env() -> None:
    """Flower must not phone home or reinstall dependencies (which would pull a CUDA torch)."""
    for key, value in {**FLOWER_ENV, **OFFLINE_ENV}.items():
        os.environ.setdefault(key, value)
    cache = Path(os.environ.setdefault("FEDVPA_CACHE", str(Path.home() / ".cache" / "fedvpa")))
    os.environ.setdefault("FLWR_HOME", str(cache / "flwr-home"))


@dataclass
class GlobalOptions:
    seed: int
    out: Path | None


app = typer.Typer(
    help="Federated variational preference alignment (FedVPA-GP) on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect preference data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _global(
    ctx: typer.Context,
    seed: Annotated[int, typer.Option(help="Seed for every random choice of the command.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (run folder, report, embeddings summary).")
    ] = None,
) -> None:
    set_runtime_env()
    ctx.obj = GlobalOptions(seed=seed, out=out)


def _opts(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    assert isinstance(obj, GlobalOptions)
    return obj


DataOpt = Annotated[
    str,
    typer.Argument(
        help="synthetic-2, synthetic-4, plural-2/3/4/6 (docs/data-family.md), "
        "or a .jsonl/.jsonl.gz file."
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="auto, generic, hh-rlhf or relabeled-hh.")]
SkipOpt = Annotated[
    bool, typer.Option("--skip-invalid", help="Skip and count invalid rows instead of stopping.")
]

BackboneOpt = Annotated[
    str, typer.Option(help="minilm, st:<name-or-path>, or causal-lm:<local path>.")
]
CacheDirOpt = Annotated[
    str,
    typer.Option(
        help="Cache folder (default $FEDVPA_CACHE, else ~/.cache/fedvpa; embeddings/ in it)."
    ),
]


@data_app.command("summary")
def data_summary(
    ctx: typer.Context,
    path: DataOpt,
    data_format: FormatOpt = "auto",
    skip_invalid: SkipOpt = False,
    num_clients: Annotated[int, typer.Option(help="Clients of the partition shown.")] = 100,
    pairs_per_client: Annotated[int, typer.Option(help="Pairs per client (min).")] = 16,
    max_pairs_per_client: Annotated[int, typer.Option(help="Pairs per client (max).")] = 0,
    type_ratio: Annotated[str, typer.Option(help="e.g. 0.3,0.7 (default: equal).")] = "",
    fraction_unseen: Annotated[float, typer.Option(help="Share of held-out clients.")] = 0.2,
    partition: Annotated[bool, typer.Option(help="Also partition and summarise.")] = True,
    partition_by: Annotated[
        str, typer.Option(help="How pairs become clients: auto, types or users (key partition).")
    ] = "auto",
) -> None:
    """Rows, user types, conflict share, lengths; and the federated partition."""
    from fedvpa.config import DataConfig
    from fedvpa.data.summary import render_summary, summarise_pairs, summarise_partition
    from fedvpa.experiment import load_pairs, make_partition

    opts = _opts(ctx)
    cfg = DataConfig(
        data=path,
        data_format=data_format,
        skip_invalid=skip_invalid,
        num_clients=num_clients,
        pairs_per_client=pairs_per_client,
        max_pairs_per_client=max_pairs_per_client,
        type_ratio=_ratio(type_ratio),
        fraction_unseen=fraction_unseen,
        partition=partition_by,
    )
    pairs, report = load_pairs(cfg, opts.seed)
    summary: dict[str, object] = {"read": report, "pairs": summarise_pairs(pairs)}
    if partition and summary["pairs"].get("user_types"):  # type: ignore[union-attr]
        summary["partition"] = summarise_partition(make_partition(cfg, opts.seed, pairs))
    typer.echo(render_summary(summary))
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "data_summary.json").write_text(json.dumps(summary, indent=2, default=str))


@app.command("embed")
def embed(
    ctx: typer.Context,
    path: DataOpt,
    data_format: FormatOpt = "auto",
    skip_invalid: SkipOpt = False,
    backbone: BackboneOpt = "minilm",
    cache_dir: CacheDirOpt = "",
    batch_size: Annotated[int, typer.Option(help="Texts per model call.")] = 64,
) -> None:
    """Embed every text of a data set into the on-disk cache (re-runs skip the model)."""
    import dataclasses
    import time

    from fedvpa.config import DataConfig, EmbeddingConfig
    from fedvpa.embeddings.backbone import make_backbone
    from fedvpa.embeddings.cache import EmbeddingCache
    from fedvpa.embeddings.pipeline import pair_texts
    from fedvpa.experiment import load_pairs

    opts = _opts(ctx)
    cfg = DataConfig(data=path, data_format=data_format, skip_invalid=skip_invalid)
    emb = EmbeddingConfig(backbone=backbone, cache_dir=cache_dir, embed_batch_size=batch_size)
    pairs, report = load_pairs(cfg, opts.seed)
    texts = [t for p in pairs for t in pair_texts(p)]
    cache = EmbeddingCache(emb.resolved_cache_dir() / "embeddings")
    start = time.perf_counter()
    vectors = cache.embed(texts, make_backbone(backbone), batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - start
    result = {
        "pairs": len(pairs),
        "texts": len(texts),
        "dim": int(vectors.shape[1]),
        "seconds": round(seconds, 2),
        "cache": str(emb.resolved_cache_dir() / "embeddings"),
        "stats": dataclasses.asdict(cache.stats),
        "read": report,
    }
    typer.echo(json.dumps(result, indent=2, default=str))
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "embed.json").write_text(json.dumps(result, indent=2, default=str))


@app.command("headroom")
def headroom(
    ctx: typer.Context,
    path: DataOpt,
    data_format: FormatOpt = "auto",
    skip_invalid: SkipOpt = False,
    backbone: BackboneOpt = "minilm",
    cache_dir: CacheDirOpt = "",
    ks: Annotated[str, typer.Option(help="Context sizes k, comma list.")] = "0,1,2,4,8,16,32,64",
    trials: Annotated[int, typer.Option(help="Simulated clients per type and k.")] = 20000,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds of the probes.")] = 5,
    conflict_share: Annotated[
        float, typer.Option(help="Synthetic data only: share of pairs the types disagree on.")
    ] = 0.5,
) -> None:
    """How much any personalised model can gain here: the Bayes-optimal ceiling against k.

    Fits per-type and monolithic logistic probes (cross-fitted) on the pair embeddings, then
    scores clients of k context pairs with the predictor that infers the type from those labels.
    """
    from fedvpa.config import DataConfig, EmbeddingConfig
    from fedvpa.data.schema import user_types
    from fedvpa.embeddings.backbone import make_backbone
    from fedvpa.embeddings.cache import EmbeddingCache
    from fedvpa.embeddings.pipeline import embed_pairs
    from fedvpa.evaluation.headroom import personalisation_headroom, render_headroom
    from fedvpa.experiment import SYNTHETIC, load_pairs

    opts = _opts(ctx)
    k_list = _int_list(ks, "ks")
    if any(k < 0 for k in k_list) or trials < 1 or folds < 2:
        raise FedvpaInputError("need ks >= 0, trials >= 1 and folds >= 2", field="ks")
    cfg = DataConfig(
        data=path,
        data_format=data_format,
        skip_invalid=skip_invalid,
        conflict_share=conflict_share,
    )
    emb = EmbeddingConfig(backbone=backbone, cache_dir=cache_dir)
    pairs, report = load_pairs(cfg, opts.seed)
    names = user_types(pairs)
    typed = [p for p in pairs if p.user_type is not None]
    if len(names) < 2:
        raise FedvpaInputError(
            f"headroom needs pairs of at least 2 user types, found {len(names)}",
            path=path,
            field="user_type",
        )
    cache = EmbeddingCache(emb.resolved_cache_dir() / "embeddings")
    tensors = embed_pairs(typed, make_backbone(backbone), cache, progress=True)
    features = (tensors.emb_a - tensors.emb_b).numpy()
    index = {name: i for i, name in enumerate(names)}
    result = personalisation_headroom(
        features,
        tensors.label.numpy(),
        [index[p.user_type] for p in typed],  # type: ignore[index]
        names,
        ks=k_list,
        trials=trials,
        folds=folds,
        seed=opts.seed,
        progress=True,
    )
    result.settings.update({"data": path, "backbone": backbone, "read": report})
    if path in SYNTHETIC:
        result.settings["conflict_share"] = conflict_share
    text = render_headroom(result, title=f"Personalisation headroom: {path}")
    typer.echo(text)
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "headroom.md").write_text(text)
        (opts.out / "headroom.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Experiment TOML (flat keys, see conf/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set latent-dim=16 (repeatable)."),
]


def _experiment(config: Path | None, overrides: list[str] | None, **options: object):
    """Config file, then explicit options, then ``--set`` pairs (the last one wins)."""
    from fedvpa.config import load_toml
    from fedvpa.experiment import ExperimentConfig

    flat: dict[str, object] = load_toml(config) if config else {}
    flat.update({k.replace("_", "-"): v for k, v in options.items() if v is not None})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise FedvpaInputError(f"expected KEY=VALUE, got {item!r}", field="--set")
        flat[key.strip()] = _parse_value(value.strip())
    return ExperimentConfig.from_flat(flat, source=str(config) if config else "options"), flat


def _parse_value(text: str) -> object:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer of more than 4300 digits
        return text


DataNameOpt = Annotated[
    str | None,
    typer.Option("--data", help="synthetic-2 (default), synthetic-4, plural-2/3/4/6, or a file."),
]
ClientsOpt = Annotated[int | None, typer.Option(help="Clients (default 100).")]
RoundsOpt = Annotated[
    int | None, typer.Option("--num-server-rounds", "--rounds", help="Rounds (default 50).")
]
PerRoundOpt = Annotated[int | None, typer.Option(help="Clients sampled per round (default 10).")]


@app.command("run")
def run(
    ctx: typer.Context,
    config: ConfigOpt = None,
    method: Annotated[str | None, typer.Option(help="fedvpa-gp (default), fedvpl, ...")] = None,
    data: DataNameOpt = None,
    num_clients: ClientsOpt = None,
    num_server_rounds: RoundsOpt = None,
    clients_per_round: PerRoundOpt = None,
    baseline: Annotated[
        str | None, typer.Option(help="Method run alongside (default fedavg-bt; '' for none).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the killed run in this run folder.")
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Train a method on Flower's simulation engine; print per-type accuracy next to a baseline."""
    from fedvpa.runner import print_run_summary, run_experiment

    opts = _opts(ctx)
    if resume is not None:
        from fedvpa.runner import load_run_config

        exp, flat = load_run_config(resume)
        out = resume
    else:
        exp, flat = _experiment(
            config,
            overrides,
            method=method,
            data=data,
            num_clients=num_clients,
            num_server_rounds=num_server_rounds,
            clients_per_round=clients_per_round,
            baseline=baseline,
        )
        exp = exp.with_seed(opts.seed)
        out = opts.out or _default_run_folder(exp)
    results = run_experiment(exp, out=out, resume=resume is not None)
    typer.echo(print_run_summary(results))


def _default_run_folder(exp) -> Path:  # noqa: ANN001 - ExperimentConfig, imported late
    """``run-dir`` if the config names one, else a fresh ``runs/<method>-seed<seed>[-N]``."""
    fed = exp.federation
    if fed.run_dir:
        return Path(fed.run_dir)
    return _fresh_folder(Path("runs") / f"{fed.method}-seed{fed.seed}")


def _fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : a default folder never collides with an old run
    (an explicit ``--out`` that exists is refused instead, so nothing is overwritten)."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _int_list(text: str, field: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise FedvpaInputError(f"expected integers like 0,1,2, got {text!r}", field=field) from exc
    if not values:
        raise FedvpaInputError("expected at least one integer", field=field)
    return values


@app.command("compare")
def compare(
    ctx: typer.Context,
    config: ConfigOpt = None,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma list (default: oracle,centralised-vpl and every federated one)."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma list of seeds (default: the global --seed, 0).")
    ] = None,
    data: DataNameOpt = None,
    num_clients: ClientsOpt = None,
    num_server_rounds: RoundsOpt = None,
    clients_per_round: PerRoundOpt = None,
    pairs_per_client: Annotated[int | None, typer.Option(help="Pairs per client (16).")] = None,
    type_ratio: Annotated[
        str | None, typer.Option(help="User-type shares, e.g. 0.3,0.7 (default: equal).")
    ] = None,
    reference_steps: Annotated[
        int | None,
        typer.Option(help="Optimiser steps of oracle / centralised-vpl (default 500 / 1000)."),
    ] = None,
    headroom: Annotated[
        bool,
        typer.Option(help="Also measure the data's personalisation headroom (seconds per seed)."),
    ] = True,
    overrides: SetOpt = None,
    stage2: Annotated[
        bool,
        typer.Option(
            "--stage2",
            help="Then run stage 2 (`fedvpa align` with FedDPO and best-of-n) on every seed's "
            "run of --stage2-methods and add its tables to the report.",
        ),
    ] = False,
    stage2_methods: Annotated[
        str | None,
        typer.Option(help="Comma list of latent methods to align (--stage2; default fedvpa-gp)."),
    ] = None,
    stage2_full: Annotated[
        bool, typer.Option(help="Stage 2's full profile instead of --quick (a GPU's work).")
    ] = False,
    stage2_policy: Annotated[
        str | None,
        typer.Option(help="Stage 2's policy: a local HF causal-LM folder (default: SmolLM2-135M)."),
    ] = None,
    stage2_prompts: Annotated[
        Path | None,
        typer.Option(help="Stage 2's held-out prompts file (default: generated afresh)."),
    ] = None,
    stage2_prompts_risky: Annotated[
        bool, typer.Option(help="Count every --stage2-prompts prompt as risky (HH harmless-base).")
    ] = False,
    stage2_feddpo: Annotated[
        bool, typer.Option(help="Stage 2 with the FedDPO baseline (the paper's, on Flower).")
    ] = True,
    stage2_threads: Annotated[
        int, typer.Option(help="Stage 2's torch CPU threads (0 = every usable core).")
    ] = 0,
) -> None:
    """Every method on the same clients, backbone, rounds and seeds; writes report.md. With
    --stage2, then stage 2 on each seed's run of the latent methods (one table over seeds)."""
    from fedvpa.compare import DEFAULT_METHODS, default_out, render_summary, run_compare

    opts = _opts(ctx)
    exp, _ = _experiment(
        config,
        overrides,
        data=data,
        num_clients=num_clients,
        num_server_rounds=num_server_rounds,
        clients_per_round=clients_per_round,
        pairs_per_client=pairs_per_client,
        type_ratio=_ratio(type_ratio) if type_ratio else None,
    )
    names = [m.strip() for m in methods.split(",")] if methods else list(DEFAULT_METHODS)
    seed_list = _int_list(seeds, "seeds") if seeds else [opts.seed]
    out = opts.out or default_out(exp.data.data)
    align_opts = None
    if stage2:  # every stage-2 option is checked before hours of stage 1
        from fedvpa.alignment.options import AlignOptions
        from fedvpa.alignment.stage2_compare import DEFAULT_STAGE2_METHODS, check_stage2

        align_opts = AlignOptions(
            policy=stage2_policy,
            prompts_file=str(stage2_prompts) if stage2_prompts else None,
            prompts_risky=stage2_prompts_risky,
            quick=not stage2_full,
            feddpo=stage2_feddpo,
            threads=stage2_threads,
            seed=opts.seed,
        )
        method_list = (
            [m.strip() for m in stage2_methods.split(",") if m.strip()]
            if stage2_methods
            else list(DEFAULT_STAGE2_METHODS)
        )
        check_stage2(method_list, names, align_opts)
    results = run_compare(
        exp, names, seed_list, out, reference_steps=reference_steps, headroom=headroom
    )
    if align_opts is not None:
        from fedvpa.alignment.stage2_compare import describe, run_stage2
        from fedvpa.compare import save_results

        run_stage2(
            results,
            align_opts,
            method_list,
            save=lambda r: save_results(r, out),
            say=lambda line: typer.echo(line),
        )
        for entry in results.get("stage2", {}).get("runs", []):
            typer.echo(f"stage 2 | {entry['method']} seed {entry['seed']} | {describe(entry)}")
    typer.echo(render_summary(results, out))
    if results["failures"]:
        raise typer.Exit(1)


@app.command("keys")
def keys(
    toml: Annotated[
        bool, typer.Option("--toml", help="Print pyproject's [tool.flwr.app.config] instead.")
    ] = False,
) -> None:
    """Every configuration key with its group, default and meaning (one table for conf/*.toml,
    --set, [tool.flwr.app.config] and config.json)."""
    from fedvpa.experiment import render_flower_table, render_key_table

    typer.echo(render_flower_table() if toml else render_key_table(), nl=False)


from fedvpa.alignment.cli import register as _register_stage2  # noqa: E402 - uses _opts

_register_stage2(app, _opts)  # stage 2: rank, generate (src/fedvpa/alignment/cli.py)


def _ratio(text: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        ratio = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise FedvpaInputError(
            f"expected numbers like 0.3,0.7, got {text!r}", field="type-ratio"
        ) from exc
    if not all(math.isfinite(r) for r in ratio):  # nan passes DataConfig's "r <= 0" check
        raise FedvpaInputError(f"expected finite numbers, got {text!r}", field="type-ratio")
    return ratio


def main(argv: list[str] | None = None) -> None:
    """Entry point: input errors become one line and exit code 2, never a traceback.

    Click's own usage errors (unknown option, unparsable value) get the same one line instead of
    Click's boxed usage block, so a script or a test can rely on one format for every bad input.
    ``argv`` lets tests call the command in-process.
    """
    import click

    try:
        code = app(args=argv, prog_name="fedvpa", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a bare `fedvpa` or `fedvpa data` asks for the help text
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        command = exc.ctx.command_path + ": " if getattr(exc, "ctx", None) else ""
        _error_line(f"{command}{exc.format_message()} (see --help)", exc.exit_code)
    except click.Abort:
        _error_line("aborted", 1)
    except FedvpaInputError as exc:
        _error_line(exc.one_line(), exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)


def _error_line(message: str, exit_code: int) -> NoReturn:
    """One line on stderr whatever the message holds: a key, value or path given on the command
    line may contain line breaks, which would split the error."""
    one_line = "".join(
        ch.encode("unicode_escape").decode() if len(f"a{ch}b".splitlines()) > 1 else ch
        for ch in message
    )
    typer.echo(f"fedvpa: error: {one_line}", err=True)
    sys.exit(exit_code)
