"""adapter.router_input "clean" (the official code): the router sees the clean input in training and in eval,
the shared expert and each routed slot get their own dropout mask; "dropped" (ours) is unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from amole.config import AdapterConfig
from amole.moe import layer as layer_module
from amole.moe.layer import AMoLELinear

D_IN, D_OUT, R, N = 12, 10, 4, 5


class RecordingDropout(nn.Dropout):
    """nn.Dropout that keeps every (input, output) pair it produced."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.calls.append((x.detach(), out.detach()))
        return out


def make_layer(router_input: str, p: float = 0.5, seed: int = 0) -> AMoLELinear:
    torch.manual_seed(seed)
    cfg = AdapterConfig(r=R, alpha=8.0, dropout=p, top_k=2, router_input=router_input)
    layer = AMoLELinear(nn.Linear(D_IN, D_OUT), cfg)
    layer.set_experts(list(range(N)), torch.randn(N, R, D_IN), torch.randn(N, D_OUT, R))
    with torch.no_grad():
        layer.shared_B.normal_()
    layer.dropout = RecordingDropout(p)
    return layer


def routed_inputs(layer: AMoLELinear, monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the (expert codes, router codes) every call of the layer routes on."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    route = layer_module.route

    def spy(e: torch.Tensor, t: torch.Tensor, *args):
        seen.append((e.detach(), t.detach().squeeze(-2)))  # t comes shaped (..., 1, r)
        return route(e, t, *args)

    monkeypatch.setattr(layer_module, "route", spy)
    return seen


@pytest.mark.parametrize("training", [False, True])
def test_clean_router_sees_the_clean_input(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = make_layer("clean").train(training)
    seen = routed_inputs(layer, monkeypatch)
    x = torch.randn(3, 7, D_IN)
    layer(x)
    e, t = seen[0]
    torch.testing.assert_close(t, x @ layer.router.detach().T)
    torch.testing.assert_close(e, torch.einsum("bsd,nrd->bsnr", x, layer.experts_A.detach()))


def test_dropped_router_sees_the_dropped_input_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = make_layer("dropped").train()
    seen = routed_inputs(layer, monkeypatch)
    x = torch.randn(3, 7, D_IN)
    layer(x)
    (_, h), = layer.dropout.calls  # one mask, shared by router and experts
    e, t = seen[0]
    torch.testing.assert_close(t, h @ layer.router.detach().T)
    assert not torch.allclose(t, x @ layer.router.detach().T)


def test_eval_is_the_same_for_both() -> None:
    x = torch.randn(2, 9, D_IN)
    outs = [make_layer(name).eval()(x) for name in ("dropped", "clean")]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_clean_training_output_follows_the_official_law() -> None:
    """y = W0 x + s B_s A_s m_s(x) + sum over the top-k of p_i s B_i A_i m_slot(x), each m its own mask,
    routing (p, top-k) from the clean x; checked token by token against the masks the layer drew."""
    layer = make_layer("clean").train()
    x = torch.randn(2, 6, D_IN)
    y = layer(x).detach()
    (_, m_shared), (_, m_slots) = layer.dropout.calls  # the shared expert's mask, then one per routed slot
    assert m_slots.shape == (2, 6, 2, D_IN)
    assert not torch.equal(m_slots[..., 0, :], m_slots[..., 1, :])  # independent masks per slot
    s = layer.scaling
    with torch.no_grad():
        A, B = layer.experts_A, layer.experts_B
        for idx in range(12):
            b, q = divmod(idx, 6)
            tok = x[b, q]
            want = layer.base(tok) + s * layer.shared_B @ (layer.shared_A @ m_shared[b, q])
            logits = (A @ tok) @ (layer.router @ tok) / math.sqrt(R)
            top_p, top_i = torch.softmax(logits, -1).topk(2)
            top_p = top_p / top_p.sum()
            for slot, (p, i) in enumerate(zip(top_p, top_i, strict=True)):
                want = want + p * s * B[i] @ (A[i] @ m_slots[b, q, slot])
            torch.testing.assert_close(y[b, q], want, rtol=1e-5, atol=1e-5)


def test_clean_training_trains_the_routed_experts_only() -> None:
    layer = make_layer("clean").train()
    x = torch.randn(1, 1, D_IN)  # one token: exactly two routed experts
    (layer(x).square().sum() + layer.lb_loss).backward()
    grads = layer.grads()
    touched = (grads["experts_B"].abs().sum((1, 2)) > 0).sum().item()
    assert touched == 2
    assert grads["router"].abs().sum() > 0 and grads["shared_A"].abs().sum() > 0
