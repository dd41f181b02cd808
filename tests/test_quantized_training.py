"""A 4-bit backbone still trains after an evaluation pass (bitsandbytes' CPU bf16 repacking has no backward)."""

from __future__ import annotations

import torch

from amole.backbones.loader import load_base_model
from amole.config import AdapterConfig, ModelConfig
from amole.moe.model import inject, trainable_parameters


def test_gradients_after_an_eval_forward_equal_those_before() -> None:
    torch.manual_seed(0)
    model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=False), device="cpu")
    inject(model, AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=0))
    params = [p for p in trainable_parameters(model) if p.numel()]
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.1)
    ids = torch.randint(3, 200, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def grads() -> list[torch.Tensor]:
        model.train()
        return list(torch.autograd.grad(model(**batch).loss, params))

    before = grads()
    model.eval()
    with torch.no_grad():
        model(**batch)  # what evaluation does between two rounds of training
    after = grads()
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
