"""Measure what the embedding cache costs on a cold run and saves on a warm one.

(i) Cold-cache throughput of ``EmbeddingCache.embed`` with the MiniLM backbone versus calling
``SentenceTransformer.encode`` directly on the same texts, same model object, same batch size.
The model is warmed up first, and each repeat runs both back to back in alternating order; the
reported ratio is the median of the per-repeat ratios (paired, so drifting machine load cancels).
Both wall-clock and process CPU time are measured: on a machine shared with other jobs the wall
ratio swings by tens of percent from run to run, while CPU time of this process (all its threads)
counts only the work done, so the CPU-time ratio is the headline figure there.
(ii) A warm re-run: a fresh cache object and a fresh, unloaded backbone over the same cache
folder, as a new process would see it. The model is never loaded on that path.

Usage:
    .venv/bin/python benchmarks/bench_embeddings.py [--n 1000] [--data synthetic-2 | PATH]

Texts are "last human turn + reply" of the data's pairs (what the pipeline embeds), deduplicated;
they are never printed. The cache lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedvpa.data.readers import read_pairs
from fedvpa.embeddings.backbone import MiniLMBackbone
from fedvpa.embeddings.cache import EmbeddingCache
from fedvpa.embeddings.pipeline import pair_texts


def load_texts(data: str, n: int, seed: int) -> list[str]:
    pairs = read_pairs(data, seed=seed, skip_invalid=True)
    texts = list(dict.fromkeys(t for p in pairs for t in pair_texts(p)))
    if len(texts) < n:
        raise SystemExit(f"{data}: only {len(texts)} distinct texts, --n asks for {n}")
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="distinct texts to embed")
    ap.add_argument("--data", default="synthetic-2", help="synthetic-2/-4 or a pairs file")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="paired cold runs (alternating)")
    ap.add_argument("--warm-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    texts = load_texts(args.data, args.n, args.seed)
    mean_chars = statistics.fmean(len(t) for t in texts)
    bb = MiniLMBackbone(args.device)
    t0 = time.perf_counter()
    st = bb.model
    load_s = time.perf_counter() - t0
    st.encode(texts[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)

    direct_s: list[float] = []
    cold_s: list[float] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    direct_cpu: list[float] = []
    cold_cpu: list[float] = []
    max_diff = 0.0
    first_cold = np.zeros(0, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="fedvpa-bench-") as tmp:
        root = Path(tmp)
        for r in range(args.repeats):
            times: dict[str, float] = {}
            cpu: dict[str, float] = {}
            outs: dict[str, np.ndarray] = {}
            for which in ("direct", "cached") if r % 2 == 0 else ("cached", "direct"):
                t, c = time.perf_counter(), time.process_time()
                if which == "direct":
                    outs[which] = st.encode(
                        texts, batch_size=args.batch_size, show_progress_bar=False
                    )
                else:
                    cache = EmbeddingCache(root / f"cold-{r}")
                    outs[which] = cache.embed(texts, bb, args.batch_size, progress=False)
                    assert cache.stats.model_calls == 1
                times[which] = time.perf_counter() - t
                cpu[which] = time.process_time() - c
            if r == 0:
                first_cold = outs["cached"]
            direct_s.append(times["direct"])
            cold_s.append(times["cached"])
            ratios.append(times["direct"] / times["cached"])  # = cached / direct throughput
            cpu_ratios.append(cpu["direct"] / cpu["cached"])
            direct_cpu.append(cpu["direct"])
            cold_cpu.append(cpu["cached"])
            max_diff = max(max_diff, float(np.abs(outs["direct"] - outs["cached"]).max()))
            print(
                f"repeat {r}: direct {times['direct']:.2f}s  cached-cold {times['cached']:.2f}s"
                f"  wall ratio {ratios[-1]:.3f}  cpu ratio {cpu_ratios[-1]:.3f}",
                file=sys.stderr,
            )

        warm_s: list[float] = []
        for _ in range(args.warm_repeats):
            fresh_bb = MiniLMBackbone(args.device)
            t = time.perf_counter()
            cache = EmbeddingCache(root / "cold-0")
            warm = cache.embed(texts, fresh_bb, args.batch_size, progress=False)
            warm_s.append(time.perf_counter() - t)
            assert cache.stats.model_calls == 0 and fresh_bb._model is None
            assert np.array_equal(warm, first_cold)
        cache_bytes = sum(f.stat().st_size for f in (root / "cold-0").rglob("*") if f.is_file())

    n = len(texts)
    direct_med, cold_med, warm_med = (statistics.median(x) for x in (direct_s, cold_s, warm_s))
    result = {
        "bench": "embeddings",
        "data": args.data,
        "n_texts": n,
        "mean_chars": round(mean_chars, 1),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "model_load_s": round(load_s, 3),
        "direct_texts_per_s": round(n / direct_med, 2),
        "cached_cold_texts_per_s": round(n / cold_med, 2),
        "cold_vs_direct_ratio": round(statistics.median(ratios), 4),
        "cold_vs_direct_ratios": [round(x, 4) for x in ratios],
        "cold_vs_direct_cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "cold_vs_direct_cpu_ratios": [round(x, 4) for x in cpu_ratios],
        "direct_cpu_s": round(statistics.median(direct_cpu), 3),
        "cold_cpu_s": round(statistics.median(cold_cpu), 3),
        "max_abs_diff_direct_vs_cached": max_diff,
        "cold_s": round(cold_med, 3),
        "warm_s": round(warm_med, 4),
        "warm_speedup": round(cold_med / warm_med, 1),
        "cache_bytes": cache_bytes,
    }
    rows = [
        ("SentenceTransformer.encode (direct)", f"{direct_med:.2f} s", f"{n / direct_med:.1f}"),
        ("EmbeddingCache.embed, cold cache", f"{cold_med:.2f} s", f"{n / cold_med:.1f}"),
        ("EmbeddingCache.embed, warm re-run", f"{warm_med:.4f} s", f"{n / warm_med:.0f}"),
    ]
    print(
        f"{n} texts from {args.data} (mean {mean_chars:.0f} chars), batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.device}"
    )
    print(f"{'path':<40}{'time (median)':>16}{'texts/s':>12}")
    for name, t_str, tps in rows:
        print(f"{name:<40}{t_str:>16}{tps:>12}")
    print(
        f"cold/direct throughput ratio: wall {result['cold_vs_direct_ratio']:.3f}, "
        f"cpu time {result['cold_vs_direct_cpu_ratio']:.3f} (target >= 0.95)"
    )
    print(f"warm re-run speed-up over cold: {result['warm_speedup']:.0f}x (target >= 20x)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
