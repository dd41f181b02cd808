"""Cost of ``adapter.router_input: clean`` (the paper's) against ``dropped`` (ours) in one AMoLE layer.

One AMoLELinear at SmolLM2-135M's size (d = 576 -> 576), a shared expert and 8 held experts, top-2, dropout
0.05, a batch of 8 x 128 tokens, in training mode: forward + backward, the two settings interleaved so drift
in machine load hits both alike; medians over ``--steps`` after a warm-up. Also the bytes autograd keeps for
the backward pass (what a long sequence or a large model pays in memory). In eval mode both are one path.

    python tests/benchmarks/bench_router_input.py [--steps 50] [--device cpu|cuda] [--whole-model]

``--whole-model``: instead, whole training steps of SmolLM2-135M (fp32, every q/v projection adapted, 8 held
experts) on the same batch, the two settings interleaved (needs the converted model in the cache).
Last line: ``router_input: clean_over_dropped=<x> (min: <x'>) saved_bytes_ratio=<y>`` (medians; min of each).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from amole.config import AdapterConfig
from amole.moe.layer import AMoLELinear, init_lora_a


def layer(router_input: str, d: int, experts: int, device: str) -> AMoLELinear:
    torch.manual_seed(0)
    cfg = AdapterConfig(num_experts=30, router_input=router_input)
    mod = AMoLELinear(nn.Linear(d, d, bias=False).to(device), cfg)
    mod.set_experts(list(range(experts)), init_lora_a(experts, cfg.r, d), torch.randn(experts, d, cfg.r) * 0.01)
    return mod.train()


def step(mod: AMoLELinear, x: torch.Tensor) -> None:
    y = mod(x)
    (y.float().square().mean() + mod.lb_loss).backward()


def saved_bytes(mod: AMoLELinear, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mod(x)
    del y
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--whole-model", action="store_true")
    args = parser.parse_args()
    if args.whole_model:
        whole_model(args)
        return
    mods = {name: layer(name, args.d, args.experts, args.device) for name in ("dropped", "clean")}
    x = torch.randn(args.batch, args.seq, args.d, device=args.device, requires_grad=True)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for mod in mods.values():  # warm-up
        for _ in range(3):
            step(mod, x)
    times: dict[str, list[float]] = {name: [] for name in mods}
    for _ in range(args.steps):
        for name, mod in mods.items():
            sync()
            start = time.perf_counter()
            step(mod, x)
            sync()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}  # the least load-disturbed step of each
    saved = {name: saved_bytes(mod, x) for name, mod in mods.items()}
    print(f"device={args.device} threads={torch.get_num_threads()} d={args.d} experts={args.experts} "
          f"tokens={args.batch}x{args.seq} steps={args.steps}")
    for name in mods:
        print(f"{name:8s} forward+backward median {med[name] * 1e3:8.3f} ms  min {best[name] * 1e3:8.3f} ms  "
              f"saved for backward {saved[name] / 2**20:7.2f} MiB")
    print(f"router_input: clean_over_dropped={med['clean'] / med['dropped']:.2f} "
          f"(min: {best['clean'] / best['dropped']:.2f}) "
          f"saved_bytes_ratio={saved['clean'] / saved['dropped']:.2f}")


def whole_model(args: argparse.Namespace) -> None:
    from bench_step import amole_model, step_fn  # same folder: the AMoLE model and step of bench_step

    from amole.config import ModelConfig

    mcfg = ModelConfig(name="smollm2-135m", quantization="none", dtype="float32")
    torch.manual_seed(0)
    ids = torch.randint(0, 49000, (args.batch, args.seq), device=args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    steps = {}
    for name in ("dropped", "clean"):
        model, params = amole_model(mcfg, AdapterConfig(num_experts=args.experts, top_k=2, router_input=name),
                                    held=args.experts, device=args.device)
        steps[name] = step_fn(model, params, batch)
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(step())
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"SmolLM2-135M fp32 {args.device} tokens={args.batch}x{args.seq} steps={args.steps}: "
          + "  ".join(f"{n} {m:.3f} s (min {min(times[n]):.3f} s)" for n, m in med.items()))
    print(f"router_input: whole_step_clean_over_dropped={med['clean'] / med['dropped']:.2f} "
          f"(min: {min(times['clean']) / min(times['dropped']):.2f})")


if __name__ == "__main__":
    main()
