"""Training-step time of AMoLE (shared + 8 held experts, top-2) against a plain peft LoRA, same batch.

Both adapters have the same rank and targets on the same SmolLM2-135M backbone, in one process. Steps are
interleaved (AMoLE, LoRA, AMoLE, ...) so drift in machine load hits both alike; the figure is the ratio of
median step times. Runs on the CPU and, where CUDA is available, on the GPU.

    python tests/benchmarks/bench_step.py [--steps 6] [--quantization none 4bit]
Last line: ``step: amole_over_lora=<x>`` (the largest ratio measured, i.e. the least flattering one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from amole.bank import create_bank, payload
from amole.config import AdapterConfig, ModelConfig
from amole.loader import load_base_model
from amole.model import import_adapters, inject, trainable_parameters


def amole_model(mcfg: ModelConfig, acfg: AdapterConfig, held: int, device: str):
    model, _ = load_base_model(mcfg, device=device)
    layers = inject(model, acfg)
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


def step_fn(model, params, batch):
    opt = torch.optim.Adam(params, lr=1e-5)
    model.train()

    def step() -> float:
        sync(batch["input_ids"].device)
        t0 = time.perf_counter()
        out = model(**batch)
        loss = out.loss
        aux = [m.lb_loss for m in model.modules() if getattr(m, "lb_loss", None) is not None]
        if aux:
            loss = loss + 0.001 * torch.stack(aux).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(batch["input_ids"].device)
        return time.perf_counter() - t0

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: str, quantization: str, batch_size: int, seq_len: int, steps: int, warmup: int) -> float:
    dtype = "bfloat16" if device == "cuda" else "float32"
    mcfg = ModelConfig(name="smollm2-135m", quantization=quantization, dtype=dtype)
    acfg = AdapterConfig(num_experts=8, top_k=2)
    torch.manual_seed(0)
    ids = torch.randint(0, 49000, (batch_size, seq_len), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    a_model, a_params = amole_model(mcfg, acfg, held=8, device=device)
    l_model, l_params = lora_model(mcfg, acfg, device=device)
    a_step, l_step = step_fn(a_model, a_params, batch), step_fn(l_model, l_params, batch)
    for _ in range(warmup):
        a_step()
        l_step()
    a_times, l_times = [], []
    for _ in range(steps):
        a_times.append(a_step())
        l_times.append(l_step())
    a, lo = statistics.median(a_times), statistics.median(l_times)
    print(f"{device:5s} {quantization:5s} {batch_size}x{seq_len}: amole {a * 1e3:8.1f} ms  lora {lo * 1e3:8.1f} ms  "
          f"ratio {a / lo:.3f}  (AMoLE trainable {sum(p.numel() for p in a_params):,}, "
          f"LoRA {sum(p.numel() for p in l_params):,})", flush=True)
    return a / lo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quantization", nargs="+", default=["none", "4bit"])
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    setups = [("cpu", 4, 256)]
    if torch.cuda.is_available():
        setups.append(("cuda", 16, 512))
    ratios = {}
    for device, bs, seq in setups:
        for q in args.quantization:
            ratios[(device, q)] = measure(device, q, bs, seq, args.steps, args.warmup)
    summary = " ".join(f"{d}/{q}={r:.2f}" for (d, q), r in ratios.items())
    print(f"ratios: {summary}")
    print(f"step: amole_over_lora={max(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
