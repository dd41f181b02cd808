"""The routing Functions (``amole.moe.routing``), whose backward is written out, against autograd differentiating
the plain formulas of spec §1: the same gates, probabilities, top-k slots and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from amole.moe.routing import gated_code, route

R, N, K = 4, 5, 2


def reference(e: Tensor, t: Tensor, top_k: int, held: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(gates, probabilities, slots) by the formulas: the softmax of e.t/sqrt(r) over the held experts, its top-k
    renormalised to sum to 1."""
    logits = (e * t.unsqueeze(-2)).sum(-1) / math.sqrt(e.shape[-1])
    if held is not None:
        logits = logits.masked_fill(~held, -math.inf)
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.topk(min(top_k, e.shape[-2]), -1)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    return gates, probs, torch.zeros_like(probs).scatter(-1, top_i, 1.0)


def leaves(*shapes: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[Tensor]:
    return [torch.randn(*s, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("held", [None, 3])
@pytest.mark.parametrize("with_probs", [True, False])
def test_gated_code_matches_autograd_of_the_formulas(shared: bool, held: int | None, with_probs: bool) -> None:
    torch.manual_seed(0)
    mask = None if held is None else torch.arange(N) < held
    t, s, e = leaves((3, 7, R), (3, 7, R * shared), (3, 7, N, R))
    codes = torch.cat([t, s, e.flatten(-2)], -1).detach().requires_grad_()
    w_code, w_probs = torch.randn(3, 7, (N + shared) * R), torch.randn(3, 7, N)

    code, routing = gated_code(codes, R, shared, K, True, mask)
    gates, probs, slots = reference(e, t, K, mask)
    want = torch.cat([s, (e * gates.unsqueeze(-1)).flatten(-2)], -1)
    torch.testing.assert_close(code, want)
    torch.testing.assert_close(routing[0], probs)
    assert torch.equal(routing[1], slots)

    loss = (code * w_code).sum() + ((routing[0] * w_probs).sum() if with_probs else 0)
    (grad,) = torch.autograd.grad(loss, codes)
    want_loss = (want * w_code).sum() + ((probs * w_probs).sum() if with_probs else 0)
    want_grad = torch.cat([g.flatten(2) for g in torch.autograd.grad(want_loss, (t, s, e))], -1)
    torch.testing.assert_close(grad, want_grad)
    if held is not None:  # the empty slots: no gradient at all
        assert grad[..., (1 + shared) * R:].unflatten(-1, (N, R))[..., held:, :].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_matches_autograd_of_the_formulas(dtype: torch.dtype) -> None:
    """bf16 codes: bf16 gates and gradients, float32 probabilities, within bf16's rounding of the float32 values."""
    torch.manual_seed(1)
    e32, t32 = leaves((6, N, R), (6, R))
    e, t = (x.detach().to(dtype).requires_grad_() for x in (e32, t32))
    w_gates, w_probs = torch.randn(6, N), torch.randn(6, N)
    gates, routing = route(e, t, K, True)
    want, probs, slots = reference(e32, t32, K, None)
    assert gates.dtype == dtype and routing[0].dtype == torch.float32
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(gates.float(), want, **tol)
    assert torch.equal(routing[1], slots)
    got = torch.autograd.grad((gates.float() * w_gates).sum() + (routing[0] * w_probs).sum(), (e, t))
    wanted = torch.autograd.grad((want * w_gates).sum() + (probs * w_probs).sum(), (e32, t32))
    for g, w in zip(got, wanted, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, **({} if dtype == torch.float32 else
                                                    {"rtol": 2e-2, "atol": 2e-2 * w.abs().max().item()}))


def test_outside_training_no_routing_is_kept() -> None:
    codes = torch.randn(2, (2 + N) * R)
    with torch.no_grad():
        code, routing = gated_code(codes, R, True, K, False)
    assert routing is None and code.shape == (2, (1 + N) * R)
