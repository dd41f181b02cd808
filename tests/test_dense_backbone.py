"""The dequantized CPU backbone is the quantized model: same logits and gradients, plain nn.Linear layers."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from amole.config import AdapterConfig, ModelConfig
from amole.dense_backbone import dequantize_frozen
from amole.loader import load_base_model
from amole.model import inject, trainable_parameters


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _bnb_layers(model: nn.Module) -> int:
    return sum(isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt) for m in model.modules())


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_dense_backbone_gives_the_quantized_logits(quantization: str) -> None:
    quantized, _ = load_base_model(ModelConfig(name="tiny-llama", quantization=quantization, dense_on_cpu=False),
                                   device="cpu")
    dense, _ = load_base_model(ModelConfig(name="tiny-llama", quantization=quantization), device="cpu")
    assert _bnb_layers(quantized) > 0 and _bnb_layers(dense) == 0
    with torch.no_grad():
        a, b = quantized(**_batch()).logits, dense(**_batch()).logits
    # 4-bit: bitsandbytes' CPU kernel dequantizes the same values; 8-bit: its int8 matmul rounds activations.
    tol = 1e-5 if quantization == "4bit" else 5e-2
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def test_dense_backbone_trains_like_the_quantized_one() -> None:
    grads = []
    for dense in (False, True):
        model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=dense),
                                   device="cpu")
        torch.manual_seed(0)
        inject(model, AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=0))
        params = [p for p in trainable_parameters(model) if p.numel()]
        with torch.no_grad():
            for p in params:
                p.normal_(std=0.1)
        model.train()
        grads.append(torch.autograd.grad(model(**_batch()).loss, params))
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
