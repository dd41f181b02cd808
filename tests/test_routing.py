"""``amole.moe.routing.route`` against the plain formulas of spec §1: the same gates, probabilities and top-k, and
the same gradients, with the gates shaped (..., n, 1) and the top-k kept as an additive 0 / -inf mask. (The
load-balance term against its formula: tests/test_layer.py and tests/test_model.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from amole.moe.routing import route

R, N, K = 4, 5, 2


def reference(e: Tensor, t: Tensor, top_k: int, held: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(gates, probabilities, 0/1 slots), (..., n): the softmax of e.t/sqrt(r) over the held experts, its top-k
    renormalised to sum to 1."""
    logits = (e * t.unsqueeze(-2)).sum(-1) / math.sqrt(e.shape[-1])
    if held is not None:
        logits = logits.masked_fill(~held, -math.inf)
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.topk(min(top_k, e.shape[-2]), -1)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    return gates, probs, torch.zeros_like(probs).scatter(-1, top_i, 1.0)


@pytest.mark.parametrize("held", [None, 3])
def test_route_matches_the_formulas_and_their_gradients(held: int | None) -> None:
    torch.manual_seed(0)
    mask = None if held is None else torch.arange(N) < held
    e, t = torch.randn(3, 7, N, R, requires_grad=True), torch.randn(3, 7, R, requires_grad=True)
    w_gates, w_probs = torch.randn(3, 7, N), torch.randn(3, 7, N)
    gates, (probs, top) = route(e, t.unsqueeze(-2), K, True, mask)
    assert gates.shape == probs.shape == top.shape == (3, 7, N, 1)
    want, want_probs, slots = reference(e, t, K, mask)
    torch.testing.assert_close(gates.squeeze(-1), want)
    torch.testing.assert_close(probs.squeeze(-1), want_probs)
    assert torch.equal(top.squeeze(-1).exp(), slots)
    got = torch.autograd.grad((gates.squeeze(-1) * w_gates).sum() + (probs.squeeze(-1) * w_probs).sum(), (e, t))
    wanted = torch.autograd.grad((want * w_gates).sum() + (want_probs * w_probs).sum(), (e, t))
    for g, w in zip(got, wanted, strict=True):
        torch.testing.assert_close(g, w)
    if held is not None:  # the empty slots: no gradient at all
        assert got[0][..., held:, :].abs().max() == 0


def test_route_keeps_no_routing_outside_training() -> None:
    gates, routing = route(torch.randn(2, N, R), torch.randn(2, 1, R), K, False)
    assert routing is None and gates.shape == (2, N, 1)

