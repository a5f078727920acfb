"""The GPU path, measured: a 0.5B causal-LM backbone's embedding pass, the selector update, DPO.

A prepared script for a machine with one H100 / H200 (a few minutes), not a test: CI has no GPU.
Everything is random-init and local (no hub): a Llama-shaped model of about 0.5B parameters
(hidden 1024, 24 layers, 16 heads, MLP 4608, vocabulary 49,152, tied embeddings) in bf16.

1. **Embedding pass** (what ``CausalLMBackbone.encode`` runs for every text: the final layer's
   state at the last token, ``position_ids_from_mask`` and ``last_token_index`` from the
   project): tokens/s and model-FLOPs utilisation (MFU) for each variant, all in one invocation:
   - ``eager``: the backbone's call as it is (SDPA attention, with an attention mask);
   - ``eager-nomask``: the same batch without a mask. A length-bucketed batch has no padding,
     and without a mask SDPA may use its fused causal (flash) kernel;
   - ``compile`` / ``compile-nomask``: the same under ``torch.compile``;
   - ``compile-max``: ``torch.compile(mode="max-autotune-no-cudagraphs")``, no mask.
   FLOPs per token: ``2 N`` (N = parameters outside the input embedding; the backbone has no LM
   head) plus causal attention ``2 n_layer L d`` (scores and weighted sum over L/2 positions on
   average). MFU divides by ``--peak-tflops`` (default: the datasheet's dense bf16 989.5 for
   H100 / H200) and, on the same line, by a bf16 8192^3 matrix product measured in this run.
2. **Selector update**: seconds per client round of ``fedvpa-gp``'s local training (every loss
   term on) with the backbone's width as input, on the CPU as the federation runs it; labelled
   pairs x local steps per second.
3. **DPO step** (stage 2): seconds per z-conditioned DPO step with LoRA (``build_z_dpo``, the
   code ``fedvpa align`` runs) on the same 0.5B model, random word prompts; skipped with a line
   when TRL / PEFT are not installed.

    PYTHONPATH=src python benchmarks/gpu_backbone.py --json gpu.json     # on the GPU machine
    .venv/bin/python benchmarks/gpu_backbone.py --tiny                    # smoke run, CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedvpa.embeddings.backbone import last_token_index, position_ids_from_mask

sys.path.insert(0, str(Path(__file__).parent))
from mixture_prior import ROUND, make_store  # noqa: E402

DATASHEET_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5}
FULL = {"hidden": 1024, "layers": 24, "heads": 16, "mlp": 4608, "vocab": 49152}
TINY = {"hidden": 64, "layers": 2, "heads": 4, "mlp": 128, "vocab": 512}
VARIANTS = ("eager", "eager-nomask", "compile", "compile-nomask", "compile-max")


def build_model(shape: dict[str, int], dtype: torch.dtype, device: str, causal_lm: bool) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    cls = LlamaForCausalLM if causal_lm else LlamaModel
    if device == "meta":  # shapes only (the parameter count): no weights are allocated
        with torch.device("meta"):
            return cls(cfg).to(dtype=dtype).eval()
    return cls(cfg).to(device=device, dtype=dtype).eval()


def flops_per_token(model: Any, seq_len: int) -> float:
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    cfg = model.config
    return 2.0 * n + 2.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def matmul_tflops(device: str, size: int) -> float:
    """bf16 matrix-product rate measured here: the ceiling actually reachable on this card."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = seconds_per_call(lambda: a @ b, device, 3, 10)
    return 2 * size**3 / seconds / 1e12


def embed_call(runner: Any, ids: torch.Tensor, use_mask: bool) -> Callable[[], torch.Tensor]:
    """``CausalLMBackbone.encode``'s forward on one batch of unpadded texts."""
    mask = torch.ones_like(ids)
    positions = position_ids_from_mask(mask)
    rows = torch.arange(ids.shape[0], device=ids.device)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            hidden = runner(
                input_ids=ids,
                attention_mask=mask if use_mask else None,
                position_ids=positions,
                use_cache=False,
            ).last_hidden_state
            return hidden[rows, last_token_index(mask)]

    return step


def embedding_pass(args: argparse.Namespace, shape: dict[str, int]) -> list[dict[str, Any]]:
    device, dtype = args.device, torch.bfloat16 if args.device != "cpu" else torch.float32
    model = build_model(shape, dtype, device, causal_lm=False)
    per_token = flops_per_token(model, args.seq_len)
    rows = []
    for variant in args.variants:
        runner = model
        if variant.startswith("compile"):
            torch._dynamo.reset()
            mode = "max-autotune-no-cudagraphs" if variant == "compile-max" else None
            runner = torch.compile(model, mode=mode)
        use_mask = variant in ("eager", "compile")
        for batch in args.batch_sizes:
            ids = torch.randint(4, shape["vocab"], (batch, args.seq_len), device=device)
            step = embed_call(runner, ids, use_mask)
            try:
                seconds = seconds_per_call(step, device, args.warmup, args.repeats)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not end the run
                rows.append({"variant": variant, "batch": batch, "error": str(exc)[:200]})
                print(f"  {variant:15s} batch {batch:4d}: failed ({str(exc)[:120]})", flush=True)
                continue
            tokens = batch * args.seq_len / seconds
            achieved = tokens * per_token / 1e12
            row = {
                "variant": variant,
                "batch": batch,
                "seq_len": args.seq_len,
                "tokens_per_s": tokens,
                "tflops": achieved,
                "mfu_datasheet": achieved / args.peak_tflops if args.peak_tflops else None,
                "mfu_measured_matmul": achieved / args.matmul_tflops
                if args.matmul_tflops
                else None,
            }
            rows.append(row)
            mfu = "" if row["mfu_datasheet"] is None else f", MFU {100 * row['mfu_datasheet']:.1f}%"
            measured = (
                ""
                if row["mfu_measured_matmul"] is None
                else f" ({100 * row['mfu_measured_matmul']:.1f}% of the measured matmul rate)"
            )
            print(
                f"  {variant:15s} batch {batch:4d}: {tokens:,.0f} tokens/s, {achieved:.1f} "
                f"TFLOP/s{mfu}{measured}",
                flush=True,
            )
    return rows


def selector_update(args: argparse.Namespace, width: int) -> dict[str, Any]:
    """One client's round of fedvpa-gp local training with inputs of the backbone's width."""
    import numpy as np

    from fedvpa.embeddings.tensors import ClientTensors, PairTensors
    from fedvpa.federation.registry import create_method
    from fedvpa.methods.base import ServerState

    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> PairTensors:
        a, b = torch.randn(n, width, generator=gen), torch.randn(n, width, generator=gen)
        return PairTensors(a, b, (torch.rand(n, generator=gen) > 0.5).float())

    pairs = args.client_pairs
    half = pairs // 2
    client = ClientTensors(0, "t0", 0, False, split(half), split(pairs - half), split(4))
    method = create_method("fedvpa-gp", {"model": {"input_dim": width}, "local": {}})
    state = method.init_server_state(0)
    latent = int(method.cfg.latent_dim)  # type: ignore[attr-defined]
    # a round where every loss term is on: mixture prior of 100 posteriors, prototype pull
    state = ServerState(state.arrays, {**state.extra, **make_store(100, latent, 0)}, {})
    server_round = ROUND
    payload = dict(method.client_payload(state, 0, server_round))
    payload["proto_label"] = np.array([0], np.int64)
    steps = int(method.local.local_steps)  # type: ignore[attr-defined]
    torch.set_num_threads(1)
    seconds = seconds_per_call(
        lambda: method.client_train(state.arrays, payload, client, {}, server_round, 0),
        "cpu",
        1,
        args.selector_repeats,
    )
    out = {
        "width": width,
        "client_pairs": pairs,
        "local_steps": steps,
        "round": server_round,
        "seconds_per_client_round": seconds,
        "pair_steps_per_s": pairs * steps / seconds,
    }
    print(
        f"  fedvpa-gp client round (width {width}, {pairs} pairs, {steps} steps, round "
        f"{server_round}, 1 CPU thread): {1000 * seconds:.1f} ms, "
        f"{out['pair_steps_per_s']:,.0f} pair-steps/s",
        flush=True,
    )
    return out


def dpo_step(args: argparse.Namespace, shape: dict[str, int]) -> dict[str, Any]:
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        print(f"  skipped: {exc.name} is not installed here (carry its wheels)", flush=True)
        return {"skipped": f"{exc.name} not installed"}
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fedvpa.alignment.dpo import ZPreference, build_z_dpo

    words = ["<unk>", "<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(shape["vocab"] - 4)]
    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model = build_model(shape, dtype, args.device, causal_lm=True)
    rng = torch.Generator().manual_seed(0)

    def text(n: int) -> str:
        ids = torch.randint(0, shape["vocab"] - 4, (n,), generator=rng)
        return " ".join(f"w{int(i)}" for i in ids)

    steps = args.dpo_steps
    pairs = [
        ZPreference(text(args.dpo_prompt_words), text(args.dpo_reply_words),
                    text(args.dpo_reply_words), [0.0] * 8)
        for _ in range((steps + 1) * args.dpo_batch)
    ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="gpu-dpo-"))
    try:
        trainer, _ = build_z_dpo(
            model, tok, 8, pairs, work, max_steps=steps + 1, batch_size=args.dpo_batch,
            learning_rate=1e-4, seed=0,
        )  # fmt: skip
        marks: list[float] = []

        from transformers import TrainerCallback

        class Clock(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, *a: object, **k: object) -> None:
                sync(args.device)
                marks.append(time.perf_counter())

        trainer.add_callback(Clock())
        trainer.args.disable_tqdm = True
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = (marks[-1] - marks[0]) / (len(marks) - 1)  # the first step warms up
    print(
        f"  z-DPO step, batch {args.dpo_batch}, prompt {args.dpo_prompt_words} + reply "
        f"{args.dpo_reply_words} words: {seconds:.3f} s",
        flush=True,
    )
    return {"batch": args.dpo_batch, "seconds_per_step": seconds, "steps_timed": len(marks) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU: smoke")
    parser.add_argument("--device", default=None, help="default: cuda if there is one, else cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: datasheet")
    parser.add_argument("--client-pairs", type=int, default=16)
    parser.add_argument("--selector-repeats", type=int, default=5)
    parser.add_argument("--dpo-steps", type=int, default=5)
    parser.add_argument("--dpo-batch", type=int, default=8)
    parser.add_argument("--dpo-prompt-words", type=int, default=64)
    parser.add_argument("--dpo-reply-words", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], choices=["embed", "selector", "dpo"])
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = TINY if args.tiny else FULL
    if args.tiny:
        args.seq_len, args.batch_sizes = min(args.seq_len, 32), [2]
        args.warmup, args.repeats, args.selector_repeats = 1, 2, 1
        args.dpo_steps, args.dpo_batch = 1, 2
        args.dpo_prompt_words, args.dpo_reply_words = 8, 8
        args.variants = [v for v in args.variants if not v.startswith("compile")]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    args.matmul_tflops = matmul_tflops(args.device, 8192) if args.device != "cpu" else None
    params = sum(p.numel() for p in build_model(shape, torch.float32, "meta", False).parameters())
    print(
        f"device: {name or args.device}; torch {torch.__version__}; backbone {params / 1e6:.0f}M "
        f"parameters; datasheet bf16 peak {args.peak_tflops} TFLOP/s; measured matmul "
        f"{args.matmul_tflops and round(args.matmul_tflops, 1)} TFLOP/s",
        flush=True,
    )
    result: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "parameters": params,
        "shape": shape,
        "peak_tflops": args.peak_tflops,
        "matmul_tflops": args.matmul_tflops,
    }
    sections = (
        ("embed", "embedding pass", lambda: embedding_pass(args, shape)),
        ("selector", "selector update", lambda: selector_update(args, shape["hidden"])),
        ("dpo", "DPO step", lambda: dpo_step(args, shape)),
    )
    for key, title, run in sections:
        if key in args.skip:
            continue
        print(f"{title}:", flush=True)
        try:
            result[key] = run()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next section
            result[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"  failed: {result[key]['error']}", flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
