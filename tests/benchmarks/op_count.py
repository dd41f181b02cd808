"""How many ops one training step issues, AMoLE against peft LoRA: at SmolLM2's width a GPU step is bound by the host
issuing ops one by one (each a dispatch, most a kernel launch), not by arithmetic (docs/gpu-check.md).

Counts the top-level aten ops (those not called by another aten op) of bench-step's forward, loss and backward
under torch's profiler, after a warm-up pass. The optimizer is left out: on a GPU torch's Adam updates all
parameters in a few multi-tensor launches, on a CPU it loops per tensor. SmolLM2 on 2026-12-04: AMoLE 11,866 ops,
LoRA 5,923, ~23 us an op on an H200; after that day's layer changes AMoLE 11,086 (6,494 that compute or copy).
Counted both ways ``model.compile`` runs it: eager (a CPU's default) and compiled (CUDA's default), where the adapter
path is one compiled graph forward and one backward (its fused kernels are not aten ops; its matmuls still are).
Runs on the CPU in a minute with the tiny model, a few with SmolLM2 (compiling included):

    python tests/benchmarks/op_count.py [--model tiny-llama] [--experts 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bench_step  # noqa: E402

from amole.backbones.loader import can_compile  # noqa: E402
from amole.config import AdapterConfig, ModelConfig  # noqa: E402
from amole.moe.model import amole_layers  # noqa: E402

# Ops that only make a new view of existing memory: a host dispatch each, but no kernel on a GPU.
VIEWS = frozenset(f"aten::{op}" for op in (
    "reshape", "view", "_unsafe_view", "narrow", "slice", "select", "t", "numpy_T", "transpose", "permute", "expand",
    "unsqueeze", "squeeze", "flatten", "unflatten", "split", "split_with_sizes", "chunk", "as_strided", "alias",
    "detach", "_reshape_alias", "view_as", "expand_as", "unbind"))


def _is_copy_free(event) -> bool:
    """A view, or a to()/contiguous() that returned its input (no child op did any work)."""
    if event.name in VIEWS:
        return True
    return event.name in ("aten::to", "aten::contiguous") and not event.cpu_children


def top_level_ops(model, batch) -> tuple[int, int]:
    """(all top-level aten ops, those that compute or copy) of one forward + loss + backward."""
    def step() -> None:
        bench_step.loss_of(model, batch, "full").backward()

    model.train()
    step()  # warm-up: lazy initialisation stays out of the count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top), sum(not _is_copy_free(e) for e in top)


def counts(model_name: str, experts: int) -> dict[str, tuple[int, int]]:
    """Top-level ops of one step: AMoLE eager (model.compile off, a CPU's default), AMoLE compiled (on, CUDA's
    default) and peft LoRA, on the same batch."""
    mcfg = ModelConfig(name=model_name, quantization="none", dtype="float32")
    acfg = AdapterConfig(num_experts=experts, top_k=2)
    out = {}
    model, _ = bench_step.amole_model(mcfg, acfg, held=experts, device="cpu")
    batch = bench_step.make_batch(2, 32, 4, model.config.vocab_size, "cpu")
    out["amole eager"] = top_level_ops(model, batch)
    for layer in amole_layers(model).values():
        layer.compiled = can_compile("cpu")  # without a C++ compiler the "compiled" count is the eager one again
    out["amole compiled"] = top_level_ops(model, batch)  # the warm-up step compiles
    del model
    model, _ = bench_step.lora_model(mcfg, acfg, device="cpu")
    out["lora"] = top_level_ops(model, batch)
    out["modules"] = (model.config.num_hidden_layers * len(acfg.target_modules),) * 2
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--experts", type=int, default=8, help="experts each AMoLE module holds")
    args = p.parse_args()
    c = counts(args.model, args.experts)
    modules = c["modules"][0]
    for i, what in enumerate(("ops", "ops that compute or copy (kernels on a GPU)")):
        lo = c["lora"][i]
        for variant in ("amole eager", "amole compiled"):
            a = c[variant][i]
            print(f"{what} per forward + backward: {variant} {a}, LoRA {lo} (ratio {a / lo:.2f}); {modules} adapted "
                  f"modules, {(a - lo) / modules:.0f} more per module")
    print(f"ops: eager_over_lora={c['amole eager'][0] / c['lora'][0]:.2f} "
          f"compiled_over_lora={c['amole compiled'][0] / c['lora'][0]:.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
