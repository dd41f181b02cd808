"""Resident memory of a long-lived client process: cycles of training steps and a decode, as rounds do.

Each cycle: three training steps of 8 rows (200-267 tokens, lengths varying) and a 32-row greedy decode of 8 tokens,
on SmolLM2 4-bit held dequantized; printed per cycle: peak RSS and the resident size after it. ``--mode``: ``fp32``,
``bf16`` (``model.compute_dtype=bfloat16``), each optionally ``+trim`` (``malloc_trim`` after each phase, as client
rounds do since 2026-12-07: amole.util.memory). Run each mode in its own process; docs/cpu-bf16.md has figures.

    python tests/benchmarks/bench_memory.py --mode bf16+trim [--cycles 4]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402

from amole.config import AdapterConfig, ModelConfig  # noqa: E402
from amole.evaluation.generation import decode  # noqa: E402
from amole.util.memory import release_freed_memory, resident_mb  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="bf16", choices=["fp32", "bf16", "fp32+trim", "bf16+trim"])
    p.add_argument("--cycles", type=int, default=4)
    args = p.parse_args()
    trim = args.mode.endswith("+trim")
    mcfg = ModelConfig(name="smollm2-135m", quantization="4bit", dtype="float32",
                       compute_dtype="bfloat16" if args.mode.startswith("bf16") else None)
    model, params = bench_step.amole_model(mcfg, AdapterConfig(num_experts=8, top_k=2), held=4, device="cpu")
    opt = torch.optim.AdamW(params, lr=1e-4)
    start = time.time()
    for cycle in range(args.cycles):
        model.train()
        for i in range(3):
            torch.manual_seed(cycle * 10 + i)
            batch = bench_step.make_batch(8, 200 + 20 * i + cycle * 7, 8, 49000, "cpu")
            loss = bench_step.loss_of(model, batch, "answer")
            opt.zero_grad()
            loss.backward()
            opt.step()
        if trim:
            release_freed_memory()
        model.eval()
        decode(model, torch.randint(3, 40000, (32, 150 + cycle * 9)).tolist(), 8, None, 0)
        if trim:
            release_freed_memory()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"{args.mode} cycle {cycle}: peak RSS {peak} MB, resident now {resident_mb():.0f} MB, "
              f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
