"""Routing in an AMoLE layer (spec §1): each token's gates over the experts a client holds, from the router's
code and each expert's A code, and the Switch-style load-balance term that keeps the experts in use."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def route(e: Tensor, t: Tensor, top_k: int, training: bool,
          held: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Gate weights (..., n, 1) from the experts' codes ``e`` (..., n, r) and the router's ``t`` (..., 1, r):
    renormalised top-k of the softmax over held experts, zero elsewhere; and while training (probabilities, top-k
    mask: 0 on a token's top-k experts, -inf elsewhere) for the load-balance term. ``held``: which slots hold an
    expert (empty ones get probability 0).

    Shaped (..., n, 1) throughout, the gates multiply the codes as they are: no unsqueeze forward and no squeeze
    back, where a step is bound by launching ops (a GPU, docs/gpu-check.md).
    """
    n, r = e.shape[-2], e.shape[-1]
    logits = (e * t).sum(-1, keepdim=True) / math.sqrt(r)
    if held is not None:  # exp(-inf) = 0: the softmax over the held experts alone, and no gradient to the rest
        logits = logits.masked_fill(~held.unsqueeze(-1), -math.inf)
    probs = torch.softmax(logits, dim=-2, dtype=torch.float32)  # float32 for bf16 adapters too, without a to()
    top_i = probs.topk(min(top_k, n), dim=-2).indices
    # The renormalised top-k of the softmax is the softmax of the top-k logits: one op back, where dividing by the
    # kept sum is eight (docs/gpu-check.md). The mask is added (an add's backward is free, masked_fill's is an op);
    # the load-balance term takes its exp, the 0/1 top-k slots, once for all layers.
    top = torch.full_like(probs, -math.inf).scatter_(-2, top_i, 0.0)
    gates = torch.softmax(logits + top, dim=-2, dtype=torch.float32)
    return gates if gates.dtype == e.dtype else gates.to(e.dtype), ((probs, top) if training else None)


def token_weights(mask: Tensor) -> Tensor:
    """Each token's weight in the load-balance term's averages, flat: 1/tokens on real tokens, 0 on padding.
    The same for every layer of a forward, so ``amole.moe.model.token_mask`` makes it once a step."""
    w = mask.reshape(-1).to(torch.float32)  # float32 like the router's probabilities
    return w / w.sum().clamp_min(1)


# A layer's routing in a training forward: (probabilities (..., n, 1), top-k mask (..., n, 1): 0 on the top-k, -inf
# elsewhere, token weights or None, n / k per slot (n,))
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
        groups.setdefault((id(routing[2]), routing[0].shape[:-2]), []).append(routing)
    terms = []
    for group in groups.values():
        probs, top, scale = (torch.cat([g[i] for g in group], dim) for i, dim in ((0, -2), (1, -2), (3, 0)))
        probs, slots = probs.reshape(-1, scale.shape[0]), top.reshape(-1, scale.shape[0]).exp()  # exp: 0/1
        weight = group[0][2]
        if weight is None:
            terms.append((probs.mean(0) * (slots.mean(0) * scale)).sum())
        else:
            terms.append((probs * torch.outer(weight, (weight @ slots) * scale)).sum())
    return sum(terms[1:], terms[0])
