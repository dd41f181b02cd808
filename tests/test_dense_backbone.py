"""The dequantized CPU backbone is the quantized model: same logits and gradients, plain nn.Linear layers (or
bf16 matmuls where model.compute_dtype asks for them)."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from amole.backbones.dense_backbone import CastLinear, dequantize_frozen
from amole.backbones.loader import bnb_config, compute_dtype, compute_dtype_here, load_base_model
from amole.config import AdapterConfig, ModelConfig
from amole.moe.model import inject, trainable_parameters


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _bnb_layers(model: nn.Module) -> int:
    return sum(isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt) for m in model.modules())


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_dense_backbone_gives_the_quantized_logits(quantization: str) -> None:
    # fp32 both ways (compute_dtype null): the same values, whatever bf16 units the CPU has
    quantized, _ = load_base_model(ModelConfig(name="tiny-llama", quantization=quantization, dense_on_cpu=False,
                                               compute_dtype=None), device="cpu")
    dense, _ = load_base_model(ModelConfig(name="tiny-llama", quantization=quantization, compute_dtype=None),
                               device="cpu")
    assert _bnb_layers(quantized) > 0 and _bnb_layers(dense) == 0
    with torch.no_grad():
        a, b = quantized(**_batch()).logits, dense(**_batch()).logits
    # 4-bit: bitsandbytes' CPU kernel dequantizes the same values; 8-bit: its int8 matmul rounds activations.
    tol = 1e-5 if quantization == "4bit" else 5e-2
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def _adapted(model: nn.Module) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The logits and the adapters' gradients of ``model`` with the same seeded LoRA injected."""
    torch.manual_seed(0)
    inject(model, AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=0))
    params = [p for p in trainable_parameters(model) if p.numel()]
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.1)
    model.train()
    out = model(**_batch())
    return out.logits.detach(), torch.autograd.grad(out.loss, params)


def test_dense_backbone_trains_like_the_quantized_one() -> None:
    grads = []
    for dense in (False, True):
        model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=dense,
                                               compute_dtype=None), device="cpu")
        grads.append(_adapted(model)[1])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_only_quantized_layers_are_replaced_and_stay_frozen() -> None:
    model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=False), device="cpu")
    n = _bnb_layers(model)
    assert dequantize_frozen(model) == n and _bnb_layers(model) == 0
    assert dequantize_frozen(model) == 0  # nothing left to replace
    assert not any(p.requires_grad for p in model.parameters())
    unquantized, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="none"), device="cpu")
    assert dequantize_frozen(unquantized) == 0


def test_bf16_compute_casts_around_the_matmuls_only() -> None:
    """model.compute_dtype=bfloat16: bf16 weights and matmuls, fp32 everywhere else (bitsandbytes' rule); the
    logits and the adapters' gradients stay those of the fp32 model to bf16 rounding."""
    outs = {}
    for compute in (None, "bfloat16"):
        model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", compute_dtype=compute),
                                   device="cpu")
        linears = [m for m in model.modules() if isinstance(m, CastLinear)]
        assert (len(linears) > 0) == (compute is not None)
        assert all(m.weight.dtype == torch.bfloat16 for m in linears)
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n or "embed" in n)
        outs[compute] = _adapted(model)
        assert outs[compute][0].dtype == torch.float32
    (a, ga), (b, gb) = outs[None], outs["bfloat16"]
    assert not torch.equal(a, b)  # the matmuls did run in bf16
    assert torch.allclose(a, b, atol=5e-2, rtol=5e-2), (a - b).abs().max()
    cos = [torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0) for x, y in zip(ga, gb, strict=True)]
    assert min(cos) > 0.99, min(cos)


def test_compute_dtype_is_checked() -> None:
    with pytest.raises(ValueError, match="model.quantization=none"):
        load_base_model(ModelConfig(name="tiny-llama", quantization="none", compute_dtype="bfloat16"), device="cpu")
    with pytest.raises(ValueError, match="unknown model.compute_dtype 'bf16'"):
        load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", compute_dtype="bf16"), device="cpu")
    assert bnb_config("4bit", "cpu", torch.bfloat16).bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("has_units", [False, True])
def test_bf16_compute_on_a_cpu_without_bf16_units_warns(has_units: bool, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Emulated bf16 is slower than fp32: asking for it there (as the compute dtype or the model's) says so, naming
    the key, and still works; fp32 never warns."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_units)
    with caplog.at_level("WARNING", logger="amole.backbones.loader"):
        model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", compute_dtype="bfloat16"),
                                   device="cpu")
        load_base_model(ModelConfig(name="tiny-llama", quantization="none", dtype="bfloat16"), device="cpu")
        load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", compute_dtype=None), device="cpu")  # fp32
    warned = [r.getMessage() for r in caplog.records if r.name == "amole.backbones.loader"]
    assert len(warned) == (0 if has_units else 2)
    assert not warned or "without bfloat16 matmul units" in warned[0] and "slower" in warned[0]
    assert not warned or warned[0].startswith("model.compute_dtype=bfloat16") and warned[1].startswith(
        "model.dtype=bfloat16")  # the key the user set is the one named
    assert any(isinstance(m, CastLinear) for m in model.modules())


@pytest.mark.parametrize("has_units", [False, True])
def test_auto_compute_picks_bf16_only_on_a_cpu_with_bf16_units(has_units: bool, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """auto: bf16 matmuls where the CPU has the units, the usual rule (fp32 on a CPU, bitsandbytes' bf16 on CUDA)
    elsewhere and for an unquantized backbone; the load says which it picked, and never warns."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_units)
    auto = ModelConfig(name="tiny-llama", quantization="4bit", compute_dtype="auto")
    assert compute_dtype(auto, "cpu") == (torch.bfloat16 if has_units else None)
    assert compute_dtype(auto, "cuda") is None
    assert compute_dtype(ModelConfig(name="tiny-llama", quantization="none", compute_dtype="auto"), "cpu") is None
    # bitsandbytes' own CPU kernels (the backbone not held dequantized) keep their usual rule
    assert compute_dtype(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=False), "cpu") is None
    with caplog.at_level("INFO", logger="amole.backbones.loader"):
        model, _ = load_base_model(auto, device="cpu")
    said = [r.getMessage() for r in caplog.records if r.name == "amole.backbones.loader"]
    assert said == [f"model.compute_dtype=auto: the backbone's matmuls run in {'bfloat16' if has_units else 'float32'}"
                    " on this cpu"]
    assert any(isinstance(m, CastLinear) for m in model.modules()) == has_units


def test_a_bf16_compute_run_is_named_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment run with another compute dtype is another run: it must not resume or skip the fp32 one."""
    from amole.compose import compose
    from tools.experiment import run_name

    base = ["budget=demo", "scenario=bigbench_demo", "seed=0"]
    assert run_name(compose([*base, "model.compute_dtype=null"])) == "bigbench_demo-fedamole-s0"
    assert run_name(compose([*base, "model.compute_dtype=bfloat16"])) == "bigbench_demo-fedamole-s0-bfloat16"
    # The default, auto, is decided on the host that simulates the federation: the name says what ran.
    for has_units, suffix in ((True, "-bfloat16"), (False, "")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda h=has_units: h)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda h=has_units: h)
        settings = compose(base)
        assert settings.model.compute_dtype == "auto"
        settings.model.compute_dtype = compute_dtype_here(settings.model, "cpu")
        assert run_name(settings) == "bigbench_demo-fedamole-s0" + suffix
        assert compute_dtype_here(settings.model, "cuda") == settings.model.compute_dtype  # a decided value stays
