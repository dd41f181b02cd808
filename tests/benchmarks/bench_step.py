"""Training-step time and tokens/s of AMoLE (shared + 8 held experts, top-2) against a plain peft LoRA, same batch.

Both adapters have the same rank and targets on the same SmolLM2-135M backbone, in one process. Each row of the
batch is labelled on its last ``--answer-tokens`` tokens only (a prompt + short answer, as in training), and
every model is stepped two ways: ``full`` (logits at every position, ``model(labels=...).loss``: the code before
issue 14) and ``answer`` (the LM head at answer positions only, ``amole.client.losses.lm_loss``: what training runs
now).
Steps are interleaved (AMoLE full, AMoLE answer, LoRA full, LoRA answer, ...) so drift in machine load hits all
alike; figures are medians. On the CPU a quantized backbone is held dequantized (``model.dense_on_cpu``, the
default); the same AMoLE model on bitsandbytes' own kernels is stepped too, so the line "vs kernels + full logits"
is today's training step against the code before issue 14, side by side; so is the same AMoLE with bf16 backbone
matmuls (``model.compute_dtype=bfloat16``, from the same adapter weights: its speed-up and loss difference). Runs
on the CPU and, where CUDA is available, on the GPU.

    python tests/benchmarks/bench_step.py [--steps 6] [--quantization none 4bit] [--answer-tokens 8]
Also stepped: the same AMoLE with its adapter path compiled (``model.compile=on``). Last line:
``step: amole_over_lora=<x> compiled_over_lora=<x> ops_over_lora=<x> ops_compiled_over_lora=<x>
host_over_lora=<x> host_compiled_over_lora=<x> [ops_whole_over_lora=<x> host_whole_over_lora=<x>]
[cpu_bf16_speedup=<x>]`` (the largest step-time ratios measured, i.e. the least flattering ones; top-level ops per
step and host time per step at negligible arithmetic from ``op_count.py`` with the tiny model, *whole* being
``model.compile=model``, CUDA's default, against eager LoRA; the bf16 backbone's speed-up where a quantized CPU model
was stepped).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import torch
from peft import LoraConfig, get_peft_model

from amole.backbones.dense_backbone import cpu_has_units
from amole.backbones.loader import can_compile, load_base_model
from amole.client.losses import lm_loss
from amole.client.train import compiled_decoder
from amole.config import AdapterConfig, ModelConfig
from amole.moe.bank import create_bank, payload
from amole.moe.model import amole_layers, import_adapters, inject, load_balance_loss, token_mask, trainable_parameters

MODES = ("full", "answer")


def amole_model(mcfg: ModelConfig, acfg: AdapterConfig, held: int, device: str, compile: str = "off"):
    """AMoLE holding ``held`` experts a module; ``compile="model"``: in fixed slots for the model compiled whole."""
    model, _ = load_base_model(mcfg, device=device)
    layers = inject(model, acfg, compile=compile, slots=acfg.num_experts)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = {k: torch.randn_like(v) * 0.02 for k, v in create_bank(shapes, acfg, seed=0).items()}
    import_adapters(model, payload(bank, {n: list(range(held)) for n in layers}))
    return model, trainable_parameters(model)


def lora_model(mcfg: ModelConfig, acfg: AdapterConfig, device: str):
    model, _ = load_base_model(mcfg, device=device)
    cfg = LoraConfig(r=acfg.r, lora_alpha=acfg.alpha, lora_dropout=acfg.dropout,
                     target_modules=list(acfg.target_modules))
    model = get_peft_model(model, cfg)
    return model, [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def copy_weights(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """Give a second model the first one's adapter weights, so that the two are stepped from the same point."""
    for d, s in zip(dst, src, strict=True):
        d.copy_(s)


def loss_of(model, batch: dict[str, torch.Tensor], mode: str, whole: bool = False) -> torch.Tensor:
    """The LM loss (plus AMoLE's load-balance term) the way ``mode`` computes it; ``whole``: the decoder through
    ``torch.compile`` as ``model.compile=model`` trains (amole.client.train.compiled_decoder)."""
    with compiled_decoder(model) if whole else nullcontext(), token_mask(model, batch["attention_mask"]):
        lm = model(**batch).loss if mode == "full" else lm_loss(model, batch)
    return lm + 0.001 * load_balance_loss(model).to(lm.device)


def step_fn(model, params, batch, mode: str, whole: bool = False) -> Callable[[], float]:
    opt = torch.optim.Adam(params, lr=1e-5)
    model.train()

    def step() -> float:
        sync(batch["input_ids"].device)
        t0 = time.perf_counter()
        loss = loss_of(model, batch, mode, whole)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(batch["input_ids"].device)
        return time.perf_counter() - t0

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(batch_size: int, seq_len: int, answer_tokens: int, vocab: int, device: str) -> dict[str, torch.Tensor]:
    """Random tokens; each row ends in ``answer_tokens`` labelled tokens after a masked prompt."""
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), device=device)
    labels = ids.clone()
    labels[:, : seq_len - answer_tokens] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@torch.no_grad()
def loss_gap(model, batch: dict[str, torch.Tensor]) -> float:
    """|full - answer| LM loss of one model in eval mode (no dropout): the two modes must agree."""
    model.eval()
    gap = (model(**batch).loss.float() - lm_loss(model, batch).float()).abs().item()
    model.train()
    return gap


def measure(device: str, quantization: str, batch_size: int, seq_len: int, steps: int, warmup: int,
            answer_tokens: int = 8, model_name: str = "smollm2-135m", dtype: str | None = None,
            tiny: dict | None = None, whole: bool = False) -> dict[str, float]:
    """Median step seconds and tokens/s per model and mode, the AMoLE/LoRA ratio and the answer-mode speed-up.
    ``tiny``: the shape of a randomly initialised ``tiny-llama`` model (e.g. Llama-3.2-1B's, in gpu_check.py).
    ``whole``: also AMoLE (``model.compile=model``: experts in fixed slots) and LoRA each with the decoder through
    ``torch.compile`` (answer-position loss, as training runs it)."""
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    mcfg = ModelConfig(name=model_name, quantization=quantization, dtype=dtype, tiny=dict(tiny or {}))
    acfg = AdapterConfig(num_experts=8, top_k=2)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    a_model, a_params = amole_model(mcfg, acfg, held=8, device=device)
    l_model, l_params = lora_model(mcfg, acfg, device=device)
    models = [("amole", a_model, a_params), ("lora", l_model, l_params)]
    # the same AMoLE with its adapter path compiled (model.compile=on), from the same weights
    c_model = None
    if can_compile(device):
        c_model, c_params = amole_model(mcfg, acfg, held=8, device=device)
        copy_weights(c_params, a_params)
        for layer in amole_layers(c_model).values():
            layer.compiled = True
        models.append(("amole_compiled", c_model, c_params))
    if device == "cpu" and quantization != "none":  # the same AMoLE on bitsandbytes' own kernels, for comparison
        k_model, k_params = amole_model(replace(mcfg, dense_on_cpu=False), acfg, held=8, device=device)
        models.append(("amole_kernel", k_model, k_params))
        # and with bf16 matmuls in the frozen backbone (model.compute_dtype), from the same adapter weights
        b_model, b_params = amole_model(replace(mcfg, compute_dtype="bfloat16"), acfg, held=8, device=device)
        copy_weights(b_params, a_params)
        models.append(("amole_bf16", b_model, b_params))
    batch = make_batch(batch_size, seq_len, answer_tokens, min(49000, a_model.config.vocab_size), device)
    gaps = {"amole": loss_gap(a_model, batch), "lora": loss_gap(l_model, batch)}
    if any(name == "amole_bf16" for name, _, _ in models):
        with torch.no_grad():
            a_model.eval(), b_model.eval()
            fp32, bf16 = lm_loss(a_model, batch).item(), lm_loss(b_model, batch).item()
            a_model.train(), b_model.train()
    steppers = {(m, mode): step_fn(model, params, batch, mode) for m, model, params in models for mode in MODES}
    if whole and can_compile(device):  # compiled whole: their own copies, so the eager models stay eager
        wholes = {"amole_whole": (amole_model(mcfg, acfg, held=8, device=device, compile="model"), a_params),
                  "lora_whole": (lora_model(mcfg, acfg, device=device), l_params)}
        for m, ((w_model, w_params), src) in wholes.items():
            copy_weights(w_params, src)
            steppers[m, "answer"] = step_fn(w_model, w_params, batch, "answer", whole=True)
    for _ in range(warmup):
        for step in steppers.values():
            step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steppers}
    for _ in range(steps):
        for key, step in steppers.items():
            times[key].append(step())
    med = {key: statistics.median(t) for key, t in times.items()}
    print("  step seconds: " + " | ".join(f"{m} {mode} " + " ".join(f"{t:.2f}" for t in times[m, mode])
                                          for m, mode in times), flush=True)
    tokens, answers = batch_size * seq_len, batch_size * answer_tokens
    out: dict[str, float] = {}
    for (m, mode), sec in med.items():
        out[f"{m}_{mode}_s"] = sec
        out[f"{m}_{mode}_tok_s"] = tokens / sec
        out[f"{m}_{mode}_answer_tok_s"] = answers / sec
    out["ratio"] = med["amole", "answer"] / med["lora", "answer"]
    out["ratio_full"] = med["amole", "full"] / med["lora", "full"]
    out["ratio_compiled"] = (med["amole_compiled", "answer"] / med["lora", "answer"] if c_model is not None
                             else float("nan"))  # no C++ compiler here: not stepped
    if ("amole_whole", "answer") in med:  # against LoRA compiled whole, and against LoRA as users run it (eager)
        out["ratio_whole"] = med["amole_whole", "answer"] / med["lora_whole", "answer"]
        out["ratio_whole_vs_eager_lora"] = med["amole_whole", "answer"] / med["lora", "answer"]
    out["amole_speedup"] = med["amole", "full"] / med["amole", "answer"]
    out["lora_speedup"] = med["lora", "full"] / med["lora", "answer"]
    out["amole_loss_gap"], out["lora_loss_gap"] = gaps["amole"], gaps["lora"]
    if device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"{device:5s} {quantization:5s} {batch_size}x{seq_len} ({answer_tokens} answer tokens a row)  "
          f"AMoLE trainable {sum(p.numel() for p in a_params):,}, LoRA {sum(p.numel() for p in l_params):,}")
    for m in ("amole", "lora"):
        print(f"  {m:5s} full {out[f'{m}_full_s'] * 1e3:8.1f} ms {out[f'{m}_full_tok_s']:8.0f} tok/s | "
              f"answer {out[f'{m}_answer_s'] * 1e3:8.1f} ms {out[f'{m}_answer_tok_s']:8.0f} tok/s "
              f"({out[f'{m}_answer_answer_tok_s']:.0f} answer tok/s) | speed-up {out[f'{m}_speedup']:.2f}x | "
              f"|loss full - answer| {out[f'{m}_loss_gap']:.1e}")
    if ("amole_kernel", "full") in med:
        k_full, k_answer = med["amole_kernel", "full"], med["amole_kernel", "answer"]
        out["amole_kernel_full_tok_s"], out["amole_kernel_answer_tok_s"] = tokens / k_full, tokens / k_answer
        print(f"  AMoLE on bitsandbytes' 4/8-bit kernels: full {tokens / k_full:8.0f} tok/s | answer "
              f"{tokens / k_answer:8.0f} tok/s | dense backbone + answer positions vs kernels + full logits (the "
              f"code before issue 14): {k_full / med['amole', 'answer']:.2f}x", flush=True)
    if ("amole_bf16", "answer") in med:
        out["amole_bf16_answer_tok_s"] = tokens / med["amole_bf16", "answer"]
        out["bf16_speedup"] = med["amole", "answer"] / med["amole_bf16", "answer"]
        out["bf16_loss_rel_diff"] = abs(bf16 - fp32) / fp32
        units = "has" if cpu_has_units(torch.bfloat16) else "lacks"
        print(f"  AMoLE, bf16 backbone matmuls (model.compute_dtype=bfloat16; this CPU {units} bf16 units): answer "
              f"{out['amole_bf16_answer_tok_s']:8.0f} tok/s, {out['bf16_speedup']:.2f}x the fp32 backbone | loss "
              f"{bf16:.4f} vs {fp32:.4f} (relative difference {out['bf16_loss_rel_diff']:.1e})", flush=True)
    print(f"  amole/lora step ratio {out['ratio']:.3f} (full logits {out['ratio_full']:.3f}; adapter path compiled "
          f"{out['ratio_compiled']:.3f})"
          + (f" | peak GPU memory {out['peak_mem_gib']:.2f} GiB" if device == "cuda" else ""), flush=True)
    if "ratio_whole" in out:
        print(f"  decoder compiled whole (model.compile=model): AMoLE {med['amole_whole', 'answer'] * 1e3:.1f} ms, "
              f"LoRA {med['lora_whole', 'answer'] * 1e3:.1f} ms: {out['ratio_whole']:.3f}; against eager LoRA "
              f"{out['ratio_whole_vs_eager_lora']:.3f}", flush=True)
    del a_model, l_model, c_model, models
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quantization", nargs="+", default=["none", "4bit"])
    p.add_argument("--answer-tokens", type=int, default=8)
    p.add_argument("--cpu-batch", type=int, nargs=2, default=[4, 256], metavar=("ROWS", "TOKENS"))
    p.add_argument("--no-cuda", action="store_true", help="CPU only, even where CUDA is available")
    args = p.parse_args()
    setups = [("cpu", *args.cpu_batch)]
    if torch.cuda.is_available() and not args.no_cuda:
        setups.append(("cuda", 16, 512))
    res = {(device, q): measure(device, q, bs, seq, args.steps, args.warmup, args.answer_tokens)
           for device, bs, seq in setups for q in args.quantization}
    import op_count  # beside this file; it imports this module, so not at the top

    ops = op_count.counts("tiny-llama", 8)
    host = ops["host"]
    print("ratios: " + " ".join(f"{d}/{q}={r['ratio']:.2f} (compiled {r['ratio_compiled']:.2f})"
                                for (d, q), r in res.items()))
    bf16 = [r["bf16_speedup"] for r in res.values() if "bf16_speedup" in r]
    print(f"step: amole_over_lora={max(r['ratio'] for r in res.values()):.2f} "
          f"compiled_over_lora={max(r['ratio_compiled'] for r in res.values()):.2f} "
          f"ops_over_lora={ops['amole eager'][0] / ops['lora'][0]:.2f} "
          f"ops_compiled_over_lora={ops['amole compiled'][0] / ops['lora'][0]:.2f} "
          f"host_over_lora={host['amole eager'] / host['lora']:.2f} "
          f"host_compiled_over_lora={host['amole compiled'] / host['lora']:.2f}"
          + (f" ops_whole_over_lora={ops['amole whole'][0] / ops['lora'][0]:.2f} "
             f"host_whole_over_lora={host['amole whole model compiled'] / host['lora']:.2f}" if "amole whole" in ops
             else "")
          + (f" cpu_bf16_speedup={max(bf16):.2f}" if bf16 else "") + f" ({'+'.join(sorted({d for d, _ in res}))})")


if __name__ == "__main__":
    main()
