"""How many ops one training step issues, AMoLE against peft LoRA: at SmolLM2's width a GPU step is bound by the host
issuing ops one by one (each a dispatch, most a kernel launch), not by arithmetic (docs/gpu-check.md).

Counts the top-level aten ops (those not called by another aten op) of bench-step's forward, loss and backward
under torch's profiler, after a warm-up pass, with the gradients set to None first as the training loop does. The
optimizer is left out: on a GPU torch's Adam updates all parameters in a few multi-tensor launches, on a CPU it
loops per tensor. SmolLM2 on 2026-12-04: AMoLE 11,866 ops, LoRA 5,923, ~23 us an op on an H200; after that day's
layer changes AMoLE 11,086 (6,494 that compute or copy); since 2026-12-07's (gates as the softmax of the top-k
logits, token weights once a step) 9,947 (5,655); with each layer's pieces stacked in one A and one B and the
load-balance term taken for all layers at once, 8,101 (4,765); with the routing shaped (..., n, 1) and the top-k
an additive mask (2026-12-08), 7,742 (4,706). Counted every way ``model.compile`` runs it: eager
(a CPU's default), the adapter path compiled (``on``: one compiled graph forward and one backward a layer; its
fused kernels are not aten ops, its matmuls still are) and the decoder compiled whole (``model``, CUDA's default),
with LoRA's decoder compiled the same way beside it.

A count weighs every op alike, but an op issued from Python (a forward, a compiled graph's wrapper, a hand-written
backward) costs the host more than one the autograd engine issues from C++. So the same step is also timed where
its arithmetic is negligible (batch 1 x 4 tokens): what is left is the host's work per step, the part of a
launch-bound GPU step that a CPU can measure (a GPU adds a launch per kernel). Interleaved medians.
Runs on the CPU in a minute with the tiny model, a few with SmolLM2 (compiling included):

    python tests/benchmarks/op_count.py [--model tiny-llama] [--experts 8] [--no-whole]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def step_fn(model, batch, whole: bool = False) -> Callable[[], None]:
    """One forward + loss + backward as the training loop runs it (gradients set to None first); ``whole``: the
    decoder through ``torch.compile`` (``model.compile=model``)."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        bench_step.loss_of(model, batch, "full", whole).backward()

    model.train()
    return step


def top_level_ops(model, batch, whole: bool = False) -> tuple[int, int]:
    """(all top-level aten ops, those that compute or copy) of one forward + loss + backward; ``whole``: with the
    decoder compiled (its fused kernels are not aten ops; the matmuls it hands to aten are)."""
    step = step_fn(model, batch, whole)
    step()  # warm-up: lazy initialisation stays out of the count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top), sum(not _is_copy_free(e) for e in top)


def set_compiled(model, on: bool) -> None:
    for layer in amole_layers(model).values():
        layer.compiled = on


def host_seconds(amole, lora, vocab: int, whole: tuple | None = None, repeats: int = 7,
                 inner: int = 20) -> dict[str, float]:
    """Median seconds of a step at batch 1 x 4 tokens, where the arithmetic is negligible, interleaved: AMoLE eager
    and with its adapter path compiled (the same model, switched between steps; the compiled function is built
    once), LoRA; and ``whole``, (AMoLE with experts in fixed slots, LoRA) each with the decoder compiled whole
    (``model.compile=model``: one graph for its forward and one for its backward, what the host saves when nothing
    runs op by op)."""
    batch = bench_step.make_batch(1, 4, 2, vocab, "cpu")
    variants = {"amole eager": (amole, False, False), "amole compiled": (amole, can_compile("cpu"), False),
                "lora": (lora, None, False)}
    if whole is not None:
        variants["amole whole model compiled"] = (whole[0], None, True)
        variants["lora whole model compiled"] = (whole[1], None, True)
    steps = {name: step_fn(model, batch, w) for name, (model, _, w) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (model, compiled, _) in variants.items():
            if compiled is not None:
                set_compiled(model, compiled)
            step = steps[name]
            step()
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            times[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def counts(model_name: str, experts: int, whole: bool = True) -> dict[str, Any]:
    """Top-level ops of one step: AMoLE eager (model.compile off, a CPU's default), its adapter path compiled (on),
    peft LoRA, and with ``whole`` AMoLE and LoRA with their decoders compiled (model, CUDA's default), on the same
    batch; and each one's host seconds a step (``host``)."""
    mcfg = ModelConfig(name=model_name, quantization="none", dtype="float32")
    acfg = AdapterConfig(num_experts=experts, top_k=2)
    out: dict[str, Any] = {}
    model, _ = bench_step.amole_model(mcfg, acfg, held=experts, device="cpu")
    vocab = model.config.vocab_size
    batch = bench_step.make_batch(2, 32, 4, vocab, "cpu")
    out["amole eager"] = top_level_ops(model, batch)
    set_compiled(model, can_compile("cpu"))  # without a C++ compiler the "compiled" count is the eager one again
    out["amole compiled"] = top_level_ops(model, batch)  # the warm-up step compiles
    lora, _ = bench_step.lora_model(mcfg, acfg, device="cpu")
    out["lora"] = top_level_ops(lora, batch)
    out["modules"] = (lora.config.num_hidden_layers * len(acfg.target_modules),) * 2
    compiled = None
    if whole and can_compile("cpu"):  # model.compile=model, CUDA's default: the decoder compiled whole
        compiled = (bench_step.amole_model(mcfg, acfg, held=experts, device="cpu", compile="model")[0],
                    bench_step.lora_model(mcfg, acfg, device="cpu")[0])
        out["amole whole"], out["lora whole"] = (top_level_ops(m, batch, whole=True) for m in compiled)
    out["host"] = host_seconds(model, lora, vocab, compiled)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--experts", type=int, default=8, help="experts each AMoLE module holds")
    p.add_argument("--no-whole", dest="whole", action="store_false",
                   help="leave out the decoders compiled whole (model.compile=model) and their compiling")
    args = p.parse_args()
    c = counts(args.model, args.experts, args.whole)
    modules = c["modules"][0]
    for i, what in enumerate(("ops", "ops that compute or copy (kernels on a GPU)")):
        lo = c["lora"][i]
        for variant in ("amole eager", "amole compiled"):
            a = c[variant][i]
            print(f"{what} per forward + backward: {variant} {a}, LoRA {lo} (ratio {a / lo:.2f}); {modules} adapted "
                  f"modules, {(a - lo) / modules:.0f} more per module")
        if "amole whole" in c:
            a, w = c["amole whole"][i], c["lora whole"][i]
            print(f"{what}, each decoder compiled whole (model.compile=model): AMoLE {a}, LoRA {w} (ratio {a / w:.2f}; "
                  f"{a / lo:.2f} against eager LoRA)")
    host = c["host"]
    print("host time a step at 1 x 4 tokens (arithmetic negligible; this CPU, interleaved medians): "
          + ", ".join(f"{name} {sec * 1e3:.2f} ms" for name, sec in host.items()))
    print(f"ops: eager_over_lora={c['amole eager'][0] / c['lora'][0]:.2f} "
          f"compiled_over_lora={c['amole compiled'][0] / c['lora'][0]:.2f} "
          + (f"whole_over_lora={c['amole whole'][0] / c['lora'][0]:.2f} " if "amole whole" in c else "") +
          f"host_eager_over_lora={host['amole eager'] / host['lora']:.2f} "
          f"host_compiled_over_lora={host['amole compiled'] / host['lora']:.2f}"
          + (f" host_whole_over_lora={host['amole whole model compiled'] / host['lora']:.2f} "
             f"host_whole_over_lora_whole={host['amole whole model compiled'] / host['lora whole model compiled']:.2f}"
             if "amole whole model compiled" in host else ""))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
