"""Keep a frozen 4-bit / 8-bit backbone dequantized on the CPU: the same quantized values, dense fp32 matmuls.

Why: on a CPU without a fast low-bit kernel, bitsandbytes runs each quantized linear as its own 4-bit GEMM in the
forward pass and dequantizes the whole weight again in every backward pass. The backbone is frozen, so its
dequantized weights never change during a run: computing them once turns every backbone matmul into a plain
BLAS call, at the cost of the fp32 weights' memory (4 bytes a parameter instead of ~0.5). The values are the
quantized ones (NF4 / int8 rounding kept), so the model is the one the quantized protocol defines; only float
summation order differs from the fused kernel (about 1e-6 relative).

Not on CUDA: there the quantized kernels are fast and the memory saving is the reason to quantize.
"""

from __future__ import annotations

import torch
from torch import nn


def _dense_weight(module: nn.Module) -> torch.Tensor | None:
    """The dequantized weight of a bitsandbytes linear, or None for any other module."""
    import bitsandbytes as bnb

    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    if isinstance(module, bnb.nn.Linear8bitLt):
        state = module.state
        cb = module.weight.data if state.CB is None else state.CB
        scb = module.weight.SCB if state.SCB is None else state.SCB
        if cb.dtype != torch.int8 or scb is None:
            return None
        return cb.float() * (scb.float().unsqueeze(1) / 127.0)
    return None


def dequantize_frozen(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Replace every bitsandbytes linear of ``model`` by a frozen ``nn.Linear`` holding its dequantized weight
    (in ``dtype``), in place; return how many were replaced. Call before adapters are injected."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = _dense_weight(child)
            if weight is None:
                continue
            dense = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                              device=weight.device, dtype=dtype)
            dense.weight = nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)
            if child.bias is not None:
                dense.bias = nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            dense.train(child.training)
            setattr(parent, name, dense)
            replaced += 1
    return replaced
