"""Greedy decoding alone, on random prompts: the KV buffer against transformers' ``DynamicLayer`` (which copies the
whole cache every step), and the batch width. SmolLM2 4-bit with AMoLE adapters, eos off (every row runs to full
length), best of ``--repeats`` interleaved; docs/benchmarks.md has figures.

    python tests/benchmarks/bench_decode.py [--prompt 200] [--new 24] [--rows 32] [--widths 16 32 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicLayer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402

from amole.config import AdapterConfig, ModelConfig  # noqa: E402
from amole.evaluation import generation  # noqa: E402


def timed(model, rows: list[list[int]], new: int, width: int, buffered: bool = True) -> tuple[float, list]:
    real = generation._BufferedLayer
    if not buffered:
        generation._BufferedLayer = lambda capacity: DynamicLayer()  # what model.generate's cache does
    try:
        start = time.perf_counter()
        out = generation.decode(model, rows, new, None, 0, batch_size=width)
        return time.perf_counter() - start, out
    finally:
        generation._BufferedLayer = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", type=int, default=200, help="prompt tokens (rows of --vary lengths below it)")
    p.add_argument("--vary", type=int, default=0, help="prompts are --prompt minus 0..vary tokens")
    p.add_argument("--new", type=int, default=24)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--widths", type=int, nargs="*", default=[], help="also time these batch widths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compute-dtype", default="auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mcfg = ModelConfig(name="smollm2-135m", quantization="4bit", compute_dtype=args.compute_dtype)
    model, _ = bench_step.amole_model(mcfg, AdapterConfig(num_experts=8, top_k=2), held=4, device="cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    lengths = args.prompt - torch.randint(0, args.vary + 1, (args.rows,), generator=g)
    rows = [torch.randint(3, 40000, (int(n),), generator=g).tolist() for n in lengths]
    timed(model, rows[:2], 2, 2)  # warm-up
    best: dict[str, float] = {}
    variants = {"dynamic": (args.rows, False), "buffered": (args.rows, True),
                **{f"width {w}": (w, True) for w in args.widths}}
    outputs = {}
    for _ in range(args.repeats):
        for name, (width, buffered) in variants.items():
            dt, outputs[name] = timed(model, rows, args.new, width, buffered)
            best[name] = min(best.get(name, float("inf")), dt)
    same = all(o == outputs["buffered"] for o in outputs.values())
    print(f"{args.rows} prompts of {args.prompt - args.vary}-{args.prompt} tokens, {args.new} new, "
          f"{args.threads} thread(s): " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
          + f"; dynamic/buffered {best['dynamic'] / best['buffered']:.2f}x; tokens "
          + ("identical" if same else "DIFFERENT"))


if __name__ == "__main__":
    main()
