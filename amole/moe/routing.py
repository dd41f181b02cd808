"""Routing in an AMoLE layer (spec §1): each token's gates over the experts a client holds, from the router's
code and each expert's A code, and the Switch-style load-balance term that keeps the experts in use.

The gates and the gating are autograd Functions with their backward written out: the same arithmetic as autograd
differentiating the formulas, in fewer ops (no broadcast sums, squeezes or gradient accumulations between the
pieces: ~9 fewer per layer a step, where a GPU step is bound by the host issuing ops, docs/gpu-check.md). Tests
hold them to autograd's gradients of the plain formulas (tests/test_routing.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def _gates(e: Tensor, t: Tensor, top_k: int, held: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(probabilities, 0/1 top-k slots, gates), float32, (..., n): the softmax of the logits ``e . t / sqrt(r)``
    over the held experts, and the renormalised top-k of it, taken as the softmax of the top-k logits (one softmax
    backward, where dividing by the kept sum is several ops)."""
    n, r = e.shape[-2], e.shape[-1]
    logits = torch.einsum("...nr,...r->...n", e, t).div_(math.sqrt(r))
    if held is not None:  # exp(-inf) = 0: the softmax over the held experts alone, and no gradient to the rest
        logits.masked_fill_(~held, -math.inf)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # float32 for bf16 adapters too
    top_i = probs.topk(min(top_k, n), dim=-1).indices
    slots = torch.zeros_like(probs).scatter_(-1, top_i, 1.0)  # the top-k as a 0/1 mask, which the term reuses
    gates = torch.softmax(logits.add_(slots.log()), dim=-1, dtype=torch.float32)  # log(slots): 0 or -inf
    return probs, slots, gates


def _logits_grad(g_gates: Tensor, g_probs: Tensor | None, gates: Tensor, probs: Tensor, r: int) -> Tensor:
    """The gradient of the logits (before the 1/sqrt(r)) from those of the gates and the probabilities."""
    f32 = torch.float32
    g = torch._softmax_backward_data(g_gates if g_gates.dtype == f32 else g_gates.to(f32), gates, -1, f32)
    if g_probs is not None:  # None where nothing used the probabilities (no load-balance term)
        g.add_(torch._softmax_backward_data(g_probs, probs, -1, f32))
    return g.div_(math.sqrt(r))


def _codes_grads(g_logits: Tensor, e: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(d/de, d/dt) of the logits' part of the loss: the logits are bilinear in the codes."""
    g = g_logits if g_logits.dtype == e.dtype else g_logits.to(e.dtype)  # a no-op to() is still an op
    return torch.einsum("...n,...r->...nr", g, t), torch.einsum("...n,...nr->...r", g, e)


class _Route(torch.autograd.Function):
    """(gates in the codes' dtype, probabilities, slots) from the expert codes ``e`` and the router's ``t``."""

    @staticmethod
    def forward(ctx: FunctionCtx, e: Tensor, t: Tensor, top_k: int, held: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        probs, slots, gates = _gates(e, t, top_k, held)
        ctx.save_for_backward(e, t, gates, probs)
        ctx.mark_non_differentiable(slots)
        ctx.set_materialize_grads(False)
        return (gates if gates.dtype == e.dtype else gates.to(e.dtype)), probs, slots

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_gates: Tensor | None, g_probs: Tensor | None, _: None) -> tuple:
        e, t, gates, probs = ctx.saved_tensors
        if g_gates is None:
            g_gates = torch.zeros_like(gates)
        g_e, g_t = _codes_grads(_logits_grad(g_gates, g_probs, gates, probs, e.shape[-1]), e, t)
        return g_e, g_t, None, None


class _GatedCode(torch.autograd.Function):
    """The code the layer's stacked B takes, ``[shared code, g_1 e_1, ..., g_n e_n]``, with the routing, from the
    layer's stacked codes ``[t, shared code, e_1, ..., e_n]`` (one input, so its gradient is one tensor too)."""

    @staticmethod
    def forward(ctx: FunctionCtx, codes: Tensor, r: int, shared: bool, top_k: int, held: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        t, s, flat = codes.split([r, r * shared, codes.shape[-1] - r * (1 + shared)], dim=-1)
        e = flat.unflatten(-1, (-1, r))
        probs, slots, gates = _gates(e, t, top_k, held)
        g = gates if gates.dtype == e.dtype else gates.to(e.dtype)
        g = g.repeat_interleave(r, dim=-1)  # each gate over its expert's r code entries
        code = flat * g
        code = torch.cat([s, code], -1) if shared else code
        ctx.save_for_backward(e, t, g, gates, probs)
        ctx.r, ctx.shared = r, shared
        ctx.mark_non_differentiable(slots)
        ctx.set_materialize_grads(False)
        return code, probs, slots

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_code: Tensor | None, g_probs: Tensor | None, _: None) -> tuple:
        e, t, g, gates, probs = ctx.saved_tensors
        r, shared = ctx.r, ctx.shared
        if g_code is None:
            g_code = torch.zeros(*e.shape[:-2], (e.shape[-2] + shared) * r, device=e.device, dtype=e.dtype)
        g_s, g_flat = g_code.split([r * shared, g_code.shape[-1] - r * shared], dim=-1)
        g_gates = torch.linalg.vecdot(g_flat.unflatten(-1, (-1, r)), e)
        g_e, g_t = _codes_grads(_logits_grad(g_gates, g_probs, gates, probs, r), e, t)
        g_e = g_e.flatten(-2).add_(g_flat * g)
        return torch.cat([g_t, g_s, g_e] if shared else [g_t, g_e], -1), None, None, None, None


def route(e: Tensor, t: Tensor, top_k: int, training: bool,
          held: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Dense gate weights (..., n) from the experts' codes ``e`` (..., n, r) and the router's ``t`` (..., r):
    renormalised top-k of the softmax over held experts, zero elsewhere; and while training (probabilities, 0/1
    top-k slots) for the load-balance term. ``held``: which slots hold an expert (empty ones get probability 0)."""
    gates, probs, slots = _Route.apply(e, t, top_k, held)
    return gates, ((probs, slots) if training else None)


def gated_code(codes: Tensor, r: int, shared: bool, top_k: int, training: bool,
               held: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """From the stacked codes ``[t, shared code, e_1, ..., e_n]`` (..., (1 + shared + n) r): the gated code
    ``[shared code, g_1 e_1, ..., g_n e_n]`` and, while training, the routing (probabilities, 0/1 top-k slots) for
    the load-balance term (see :func:`route`)."""
    code, probs, slots = _GatedCode.apply(codes, r, shared, top_k, held)
    return code, ((probs, slots) if training else None)


def token_weights(mask: Tensor) -> Tensor:
    """Each token's weight in the load-balance term's averages, flat: 1/tokens on real tokens, 0 on padding.
    The same for every layer of a forward, so ``amole.moe.model.token_mask`` makes it once a step."""
    w = mask.reshape(-1).to(torch.float32)  # float32 like the router's probabilities
    return w / w.sum().clamp_min(1)


# A layer's routing in a training forward: (probabilities (..., n), 0/1 top-k slots (..., n), token weights or
# None, n / k per slot)
Routing = tuple[Tensor, Tensor, Tensor | None, Tensor]


def load_balance(routings: list[Routing]) -> Tensor:
    """Sum over layers of the Switch-style term (n / k) * sum_i P_i f_i over the (unpadded) tokens of a forward:
    P_i the mean probability of expert i, f_i the fraction of top-k picks it got (token weights: :func:`token_weights`,
    None for every token alike).

    Layers of one forward share their token weights and are taken at once: a term per layer is ~10 ops forward
    and back each step (docs/gpu-check.md). The fractions have no gradient; folded with the weights into one
    constant, the backward is a multiply and a sum. Padding is weighted out rather than indexed out: boolean
    indexing would make a GPU wait for the host.
    """
    groups: dict[tuple, list[Routing]] = {}
    for routing in routings:  # one group per forward in practice (amole.moe.model.token_mask sets one weight)
        groups.setdefault((id(routing[2]), routing[0].shape[:-1]), []).append(routing)
    terms = []
    for group in groups.values():
        probs, slots, scale = (torch.cat([g[i] for g in group], -1) for i in (0, 1, 3))
        probs, slots = probs.reshape(-1, probs.shape[-1]), slots.reshape(-1, slots.shape[-1])
        weight = group[0][2]
        if weight is None:
            terms.append((probs.mean(0) * (slots.mean(0) * scale)).sum())
        else:
            terms.append((probs * torch.outer(weight, (weight @ slots) * scale)).sum())
    return sum(terms[1:], terms[0])
