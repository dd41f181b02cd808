"""The AMoLE layer against references computed by hand (and against peft's LoRA)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from amole.config import AdapterConfig
from amole.moe.layer import AMoLELinear

D_IN, D_OUT, R = 12, 10, 4


def make_layer(n_experts: int, top_k: int = 2, shared: bool = True, seed: int = 0) -> AMoLELinear:
    torch.manual_seed(seed)
    cfg = AdapterConfig(r=R, alpha=8.0, dropout=0.0, top_k=top_k, shared_expert=shared)
    layer = AMoLELinear(nn.Linear(D_IN, D_OUT), cfg)
    ids = [3 * i + 1 for i in range(n_experts)]
    layer.set_experts(ids, torch.randn(n_experts, R, D_IN), torch.randn(n_experts, D_OUT, R))
    with torch.no_grad():
        if layer.shared_B is not None:
            layer.shared_B.normal_()
    return layer


def reference(layer: AMoLELinear, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the formula of spec §1 written as plainly as possible."""
    s = layer.scaling
    out = []
    for tok in x.reshape(-1, D_IN):
        y = layer.base(tok)
        if layer.shared_A is not None:
            y = y + s * layer.shared_B @ (layer.shared_A @ tok)
        t = layer.router @ tok
        n = layer.num_experts
        if n:
            logits = torch.stack([(layer.experts_A[i] @ tok) @ t / math.sqrt(R) for i in range(n)])
            p = torch.softmax(logits, 0)
            k = min(layer.top_k, n)
            top = torch.topk(p, k).indices.tolist()
            z = sum(p[i] for i in top)
            for i in top:
                y = y + (p[i] / z) * s * layer.experts_B[i] @ (layer.experts_A[i] @ tok)
        out.append(y)
    return torch.stack(out).reshape(*x.shape[:-1], D_OUT)


def test_shared_only_equals_peft_lora() -> None:
    torch.manual_seed(1)
    base = nn.Sequential()
    base.add_module("q_proj", nn.Linear(D_IN, D_OUT))
    lora = get_peft_model(
        base, LoraConfig(r=R, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"])
    )
    peft_layer = lora.base_model.model.q_proj
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    cfg = AdapterConfig(r=R, alpha=8.0, dropout=0.0)
    layer = AMoLELinear(peft_layer.base_layer, cfg)
    with torch.no_grad():
        layer.shared_A.copy_(peft_layer.lora_A["default"].weight)
        layer.shared_B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(3, 5, D_IN)
    torch.testing.assert_close(layer(x), peft_layer(x))


@pytest.mark.parametrize(("n", "k", "shared"), [(1, 2, True), (4, 2, True), (5, 3, False), (6, 1, True)])
def test_routed_forward_matches_reference(n: int, k: int, shared: bool) -> None:
    layer = make_layer(n, top_k=k, shared=shared)
    x = torch.randn(2, 7, D_IN)
    torch.testing.assert_close(layer(x), reference(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "k"), [(1, 2), (4, 2), (5, 3), (6, 1)])
def test_gradients_match_reference(n: int, k: int) -> None:
    """The gates are taken as the softmax of the top-k logits (one op back); the reference renormalises the
    top-k probabilities as the spec writes it: the same gradients."""
    layer = make_layer(n, top_k=k).train()
    x = torch.randn(2, 7, D_IN, requires_grad=True)
    grads = []
    for fn in (layer, lambda x: reference(layer, x)):
        layer.zero_grad()
        x.grad = None
        (fn(x) * torch.linspace(-1, 1, D_OUT)).square().sum().backward()
        g = layer.grads()
        grads.append([x.grad] + [g[k] for k in ("router", "shared_A", "shared_B", "experts_A", "experts_B")])
    if k == 1 or n == 1:  # the one gate is 1 whatever the router says: its gradient is zero, the reference's noise
        assert grads[0][1].abs().max() == 0 and grads[1][1].abs().max() < 1e-6 * grads[1][0].abs().max()
        grads = [g[:1] + g[2:] for g in grads]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_no_experts_no_shared_is_base() -> None:
    layer = make_layer(0, shared=False)
    x = torch.randn(4, D_IN)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_gradients_reach_every_held_expert_and_router() -> None:
    layer = make_layer(4, top_k=2)
    layer.train()
    x = torch.randn(64, D_IN)
    (layer(x) ** 2).sum().backward()
    assert layer.base.weight.grad is None
    grads = layer.grads()
    for name in ("router", "shared_A", "shared_B"):
        grad = grads[name]
        assert grad is not None and grad.abs().sum() > 0, name
    for i in range(4):
        assert grads["experts_A"][i].abs().sum() > 0, f"expert {i} A"
        assert grads["experts_B"][i].abs().sum() > 0, f"expert {i} B"


def test_load_balance_term_matches_formula_and_ignores_padding() -> None:
    layer = make_layer(4, top_k=2)
    layer.train()
    x = torch.randn(2, 6, D_IN)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    layer.token_mask = mask
    layer(x)
    tokens = x[mask.bool()]
    logits = torch.stack([(tokens @ layer.experts_A[i].T * (tokens @ layer.router.T)).sum(-1) for i in range(4)], -1)
    p = torch.softmax(logits / math.sqrt(R), -1)
    top = p.topk(2, -1).indices
    f = torch.zeros(4).index_add_(0, top.reshape(-1), torch.ones(top.numel())) / top.numel()
    expected = 4 * (p.mean(0) * f).sum()
    torch.testing.assert_close(layer.lb_loss, expected)
    assert layer.lb_loss.requires_grad


def test_masked_training_step_never_makes_the_device_wait_for_the_host() -> None:
    """Padding is weighted out of the load-balance term, not indexed out: boolean indexing (nonzero) or reading a
    value back would stall a GPU once per module per step."""
    layer = make_layer(4).train()
    layer.token_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (layer(torch.randn(2, 6, D_IN)).square().sum() + layer.lb_loss).backward()
    names = {e.name for e in prof.events()}
    assert not names & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select"}


def test_statistics_are_token_weighted_means() -> None:
    layer = make_layer(3)
    layer.eval()
    layer.collect_stats = True
    xs = [torch.randn(1, 5, D_IN), torch.randn(1, 2, D_IN)]
    for x in xs:
        layer(x)
    tokens = torch.cat([x.reshape(-1, D_IN) for x in xs])
    assert layer.stat_tokens == 7
    torch.testing.assert_close(layer.stat_router.float() / 7, (tokens @ layer.router.T).mean(0))
    for i in range(3):
        torch.testing.assert_close(layer.stat_experts[i].float() / 7, (tokens @ layer.experts_A[i].T).mean(0))


def test_set_experts_rejects_wrong_shapes_and_duplicates() -> None:
    layer = make_layer(2)
    with pytest.raises(ValueError, match="do not fit"):
        layer.set_experts([0, 1], torch.zeros(2, R + 1, D_IN), torch.zeros(2, D_OUT, R))
    with pytest.raises(ValueError, match="duplicate"):
        layer.set_experts([0, 0], torch.zeros(2, R, D_IN), torch.zeros(2, D_OUT, R))
    assert layer.expert_ids == [1, 4]


@pytest.mark.parametrize("n", [1, 2, 3, 6])
@pytest.mark.parametrize("router_input", ["dropped", "clean"])
def test_fixed_expert_slots_change_nothing_but_shapes(n: int, router_input: str) -> None:
    """``model.compile=model`` keeps a module's experts in 6 fixed slots: same output, load-balance term, gradients,
    statistics and export as the held experts alone; the empty slots get exactly zero gradients (Adam leaves them
    zero), also when fewer than top-k experts are held."""
    from amole.moe.model import export_adapters

    exact = make_layer(n)
    exact.router_input = router_input
    if router_input == "clean" and n >= 2:  # its own dropout masks per routed slot: the same draws both ways
        exact.dropout = nn.Dropout(0.1)
    slotted = copy.deepcopy(exact)
    slotted.slots = 6
    slotted.set_experts(exact.expert_ids, exact.experts_A, exact.experts_B)
    assert slotted.experts_A.shape[0] == 6 and slotted.num_experts == n
    x, mask = torch.randn(3, 5, D_IN), torch.rand(3, 5) > 0.3
    for layer in (exact, slotted):
        layer.token_mask = mask
        torch.manual_seed(1)
        y = layer(x)
        (y.square().mean() + layer.lb_loss).backward()
    torch.manual_seed(2)
    want = exact(x)
    torch.manual_seed(2)
    torch.testing.assert_close(slotted(x), want)
    torch.testing.assert_close(slotted.lb_loss, exact.lb_loss)
    got, want = slotted.grads(), exact.grads()
    # a matmul over 6 slots may sum in another order than over n: float32 rounding of a gradient's largest entry
    for name in ("router", "shared_A", "shared_B"):
        torch.testing.assert_close(got[name], want[name], atol=1e-6 * want[name].abs().max(), rtol=1.3e-6)
    for name in ("experts_A", "experts_B"):
        grad = got[name]
        torch.testing.assert_close(grad[:n], want[name], atol=1e-6 * want[name].abs().max(), rtol=1.3e-6)
        assert grad[n:].abs().max() == 0 if n < 6 else True
    torch.testing.assert_close(export_adapters(slotted), export_adapters(exact))
    for layer in (exact, slotted):
        layer.eval().collect_stats = True
        with torch.no_grad():
            layer(x)
    torch.testing.assert_close(slotted.stat_experts, exact.stat_experts)
    torch.testing.assert_close(slotted.stat_router, exact.stat_router)
