"""Seconds per z-conditioned DPO step of ``fedvpa align`` under several settings, one invocation.

The quick profile's time is mostly DPO (40 steps of batch 4 on SmolLM2-135M). This measures a
step with TRL's gradient checkpointing on and off and with 1 or 2 torch threads, on the DPO
pairs of a finished align folder (its samples, labels and groups), with the settings
interleaved (A B A B ...) so that load on the shared machine falls on all of them alike. Compare
the ratios within one run, not absolute times across runs.

    .venv/bin/python benchmarks/dpo_step.py runs/fedvpa-gp-seed0-2/align --steps 4 --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedvpa.alignment.align import z_preferences
from fedvpa.alignment.dpo import build_z_dpo
from fedvpa.alignment.policy import load_policy


def time_steps(
    align_dir: Path, steps: int, batch: int, checkpointing: bool, threads: int, latent_dim: int
) -> float:
    """Seconds per optimiser step (the reference pass, done in the trainer's constructor, and
    the first step, which warms up allocators, are not counted)."""
    torch.set_num_threads(threads)
    policy = load_policy(None)
    pairs = z_preferences(align_dir, policy.tokenizer)[: (steps + 1) * batch]
    work = Path(tempfile.mkdtemp(prefix="dpo-step-"))
    try:
        torch.manual_seed(0)
        trainer, _ = build_z_dpo(
            policy.model, policy.tokenizer, latent_dim, pairs, work, max_steps=steps + 1,
            batch_size=batch, learning_rate=1e-3, seed=0, gradient_checkpointing=checkpointing,
        )  # fmt: skip
        marks: list[float] = []

        from transformers import TrainerCallback

        class Clock(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, *args: object, **kwargs: object) -> None:
                marks.append(time.perf_counter())

        trainer.add_callback(Clock())
        trainer.args.disable_tqdm = True
        trainer.train()
        return (marks[-1] - marks[0]) / (len(marks) - 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("align_dir", type=Path, help="a finished `fedvpa align` folder")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import json

    latent_dim = len(next(iter(json.loads((args.align_dir / "groups.json").read_text()).values())))
    settings = list(itertools.product([True, False], args.threads))
    times: dict[tuple[bool, int], list[float]] = {s: [] for s in settings}
    for r in range(args.repeats):
        for ckpt, threads in settings:
            t = time_steps(args.align_dir, args.steps, args.batch_size, ckpt, threads, latent_dim)
            times[(ckpt, threads)].append(t)
            print(f"repeat {r}: checkpointing {ckpt!s:5} threads {threads}: {t:.2f} s/step")
    base = statistics.median(times[settings[0]])
    print("\n| gradient checkpointing | threads | s per step (median) | vs checkpointing, 1st |")
    print("|---|---|---|---|")
    for (ckpt, threads), found in times.items():
        med = statistics.median(found)
        print(f"| {'on' if ckpt else 'off'} | {threads} | {med:.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
