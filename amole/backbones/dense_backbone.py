"""Keep a frozen 4-bit / 8-bit backbone dequantized on the CPU: the same quantized values, dense fp32 matmuls.

Why: on a CPU without a fast low-bit kernel, bitsandbytes runs each quantized linear as its own 4-bit GEMM in the
forward pass and dequantizes the whole weight again in every backward pass. The backbone is frozen, so its
dequantized weights never change during a run: computing them once turns every backbone matmul into a plain
BLAS call, at the cost of the fp32 weights' memory (4 bytes a parameter instead of ~0.5). The values are the
quantized ones (NF4 / int8 rounding kept), so the model is the one the quantized protocol defines; only float
summation order differs from the fused kernel (about 1e-6 relative).

Not on CUDA: there the quantized kernels are fast and the memory saving is the reason to quantize.

``model.compute_dtype`` (bitsandbytes' ``compute_dtype``, applied here the way its layers apply it) may hold the
dequantized weights in bfloat16: the matmuls then run in bf16 and everything else (norms, attention, the loss,
the adapters) stays in the model's dtype. Only worth it on CPUs with bf16 matmul units (AMX, AVX512-BF16).
"""

from __future__ import annotations

import torch
from torch import nn


def cpu_has_units(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` in hardware (AMX or AVX512-BF16 for bf16, AMX-FP16 for fp16); fp32
    always. Without them torch emulates the low precision and its matmuls run slower than fp32's."""
    if dtype == torch.bfloat16:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if dtype == torch.float16:
        return torch.cpu._is_amx_fp16_supported()
    return True


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


class CastLinear(nn.Linear):
    """A frozen linear whose weight is held in a lower precision than the model: it multiplies in the weight's
    dtype and returns the input's, as a bitsandbytes layer with a ``compute_dtype`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def dequantize_frozen(model: nn.Module, dtype: torch.dtype = torch.float32, compute: torch.dtype | None = None) -> int:
    """Replace every bitsandbytes linear of ``model`` by a frozen ``nn.Linear`` holding its dequantized weight
    (in ``dtype``), in place; return how many were replaced. Call before adapters are injected.

    With a ``compute`` dtype other than ``dtype`` the weight is held in ``compute`` and the layer casts around
    its matmul (:class:`CastLinear`)."""
    compute = compute or dtype
    linear = nn.Linear if compute == dtype else CastLinear
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = _dense_weight(child)
            if weight is None:
                continue
            dense = linear(child.in_features, child.out_features, bias=child.bias is not None,
                           device=weight.device, dtype=compute)
            dense.weight = nn.Parameter(weight.to(compute).contiguous(), requires_grad=False)
            if child.bias is not None:
                dense.bias = nn.Parameter(child.bias.data.to(compute), requires_grad=False)
            dense.train(child.training)
            setattr(parent, name, dense)
            replaced += 1
    return replaced
