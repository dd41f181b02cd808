"""``model.compile``: the adapter path through torch.compile gives the eager layer's outputs, load-balance term and
gradients (to float tolerance), for new sequence lengths and expert counts too; ``auto`` is on with CUDA only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from amole.backbones.loader import can_compile, compile_mode
from amole.config import AdapterConfig, ModelConfig
from amole.moe.layer import AMoLELinear

D_IN, D_OUT, R = 16, 12, 4


def pair(n: int, dropout: float) -> tuple[AMoLELinear, AMoLELinear]:
    """Two layers with the same weights, one eager and one compiled."""
    torch.manual_seed(0)
    cfg = AdapterConfig(r=R, alpha=8.0, dropout=dropout, top_k=2)
    eager = AMoLELinear(nn.Linear(D_IN, D_OUT), cfg)
    eager.set_experts(list(range(n)), torch.randn(n, R, D_IN), torch.randn(n, D_OUT, R))
    with torch.no_grad():
        eager.shared_B.normal_()
    compiled = copy.deepcopy(eager)
    compiled.compiled = True
    return eager, compiled


def step(layer: AMoLELinear, x: torch.Tensor, mask: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    layer.token_mask = mask
    torch.manual_seed(seed)  # the same dropout mask both ways: dropout stays outside the compiled graph
    y = layer(x)
    out = {"y": y.detach()}
    if layer.training:
        (y.square().mean() + layer.lb_loss).backward()
        out["lb"] = layer.lb_loss.detach()
        out |= {name: g.clone() for name, g in layer.grads().items() if g is not None}
        layer.zero_grad(set_to_none=True)
    return out


@pytest.mark.skipif(not can_compile("cpu"), reason="torch.compile needs a C++ compiler on a CPU")
def test_compiled_layer_equals_the_eager_one() -> None:
    from torch._dynamo.utils import counters

    eager, compiled = pair(5, dropout=0.05)
    cases = [(True, (2, 7), True), (True, (3, 11), False), (False, (2, 9), True), (False, (4, 1), False)]
    for n_after, (training, shape, masked) in zip((5, 5, 5, 3), cases, strict=True):
        if n_after != compiled.num_experts:  # a new assignment: fewer experts, same compiled function
            for layer in (eager, compiled):
                layer.set_experts(layer.expert_ids[:n_after], layer.experts_A[:n_after], layer.experts_B[:n_after])
        x = torch.randn(*shape, D_IN)
        mask = (torch.rand(shape) > 0.3) if masked else None
        want = step(eager.train(training), x, mask, seed=1)
        got = step(compiled.train(training), x, mask, seed=1)
        assert want.keys() == got.keys()
        for key in want:  # relative to the tensor's scale: summation order differs in fused kernels
            gap = (got[key] - want[key]).abs().max().item()
            assert gap <= 1e-5 * want[key].abs().max().item() + 1e-7, (key, shape, training, gap)
        if training:
            assert {"experts_A", "experts_B", "router", "shared_A", "shared_B"} <= set(want)
    assert counters["stats"]["unique_graphs"] > 0  # it did compile (a fallback to eager would pass the checks)


def test_model_compile_choice() -> None:
    assert compile_mode(ModelConfig(), "cpu") == "off"  # auto: eager on a CPU (measured no faster)
    assert compile_mode(ModelConfig(), "cuda") == "model"  # auto: compiled where the host issuing ops is the cost
    if can_compile("cpu"):
        assert compile_mode(ModelConfig(compile="on"), "cpu") == "adapters"
        assert compile_mode(ModelConfig(compile="Model"), "cpu") == "model"
    assert compile_mode(ModelConfig(compile="model"), "cuda") == "model"
    assert compile_mode(ModelConfig(compile="False"), "cuda") == "off"  # a YAML false arrives as a string
    with pytest.raises(ValueError, match="model.compile 'fast'"):
        compile_mode(ModelConfig(compile="fast"))


@pytest.mark.parametrize("choice", ["on", "model"])
def test_model_compile_without_a_compiler_says_so(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(ValueError, match=f"model.compile={choice} needs a C\\+\\+ compiler"):
        compile_mode(ModelConfig(compile=choice), "cpu")


@pytest.mark.skipif(not can_compile("cpu"), reason="torch.compile needs a C++ compiler on a CPU")
@pytest.mark.timeout(600)
def test_compiled_path_compiles_a_bounded_set_of_variants_and_reuses_them() -> None:
    """Layers of two widths, assignments of 1 to 5 experts, training and evaluation, one-token and longer inputs:
    a bounded set of graphs, under the recompile limit (past it the layers would quietly run eager); then new
    expert counts and lengths compile nothing more."""
    from torch._dynamo.utils import counters

    from amole.moe.layer import RECOMPILE_LIMIT

    torch.manual_seed(0)
    cfg = AdapterConfig(r=R, alpha=8.0, dropout=0.0, top_k=2)
    layers = [AMoLELinear(nn.Linear(D_IN, d_out), cfg) for d_out in (D_OUT, D_IN)]
    for layer in layers:
        layer.compiled = True

    def sweep(counts: tuple[int, ...], lengths: tuple[int, ...]) -> None:
        for n in counts:
            for layer in layers:
                layer.set_experts(list(range(n)), torch.randn(n, R, D_IN), torch.randn(n, layer.out_features, R))
            for length in lengths:
                x = torch.randn(2, length, D_IN)
                for training in (True, False):
                    with torch.set_grad_enabled(training):
                        h = x.requires_grad_(training and length > 1)  # the first adapted layer's input needs none
                        for layer in layers:
                            y = layer.train(training)(h)
                        if training:
                            (y.square().mean() + layers[0].lb_loss).backward()

    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # a quiet fallback to eager fails here
        sweep((1, 2, 3, 5), (1, 4, 7))
        graphs = counters["stats"]["unique_graphs"]
        assert 0 < graphs < RECOMPILE_LIMIT
        sweep((4, 6), (3, 9))  # new expert counts and lengths
    assert counters["stats"]["unique_graphs"] == graphs


def _assign(model: nn.Module, seed: int) -> None:
    """A new assignment: 1 to 4 experts a module, fresh adapter values, the same in every model given ``seed``."""
    from amole.moe.model import amole_layers

    g = torch.Generator().manual_seed(seed)
    for i, (_, layer) in enumerate(sorted(amole_layers(model).items())):
        n = 1 + (seed + i) % 4
        ids = sorted(torch.randperm(6, generator=g)[:n].tolist())
        layer.set_experts(ids, torch.randn(n, layer.r, layer.in_features, generator=g) * 0.1,
                          torch.randn(n, layer.out_features, layer.r, generator=g) * 0.1)
        with torch.no_grad():
            for p in (layer.router, layer.shared_A, layer.shared_B):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        length = int(torch.randint(17, 40, (1,), generator=g))
        ids = torch.randint(0, 256, (2, length), generator=g)
        labels = ids.clone()
        labels[:, : length // 2] = -100
        attention = torch.ones_like(ids)
        attention[1, -3:] = 0
        labels[1, -3:] = -100
        yield {"input_ids": ids, "attention_mask": attention, "labels": labels}


@pytest.mark.skipif(not can_compile("cpu"), reason="torch.compile needs a C++ compiler on a CPU")
@pytest.mark.timeout(600)
def test_model_compiled_whole_trains_as_eager_and_reassignments_reuse_its_graphs() -> None:
    """``model.compile=model``: the same losses and trained adapters as eager training (no dropout, so no random
    draws that differ), and a second round with other expert counts and lengths compiles nothing new; evaluation
    after training runs the eager decoder again."""
    from torch._dynamo.utils import counters

    from amole.backbones.loader import load_base_model
    from amole.client.train import train_steps
    from amole.config import TrainConfig
    from amole.moe.model import compiled_whole, export_adapters, inject

    acfg = AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=6, top_k=2)
    models = {}
    for mode in ("off", "model"):
        model, _ = load_base_model(ModelConfig(name="tiny-llama", tiny={"num_hidden_layers": 1}))
        inject(model, acfg, compile=mode, slots=4)
        models[mode] = model
    assert compiled_whole(models["model"]) and not compiled_whole(models["off"])
    cfg = TrainConfig(steps=3, lr=1e-3)
    counters.clear()
    for server_round in (1, 2):
        got = {}
        for mode, model in models.items():
            _assign(model, server_round)
            metrics = train_steps(model, _batches(server_round), cfg, server_round)
            got[mode] = (metrics, export_adapters(model))
        if server_round == 1:
            graphs = counters["stats"]["unique_graphs"]
            assert graphs > 0  # it did compile
        for key in ("train_loss", "train_lb_loss"):
            assert got["model"][0][key] == pytest.approx(got["off"][0][key], rel=1e-5), key
        assert got["model"][1].keys() == got["off"][1].keys()
        # atol: 1 % of one Adam step (lr): where a gradient is ~0, float rounding can flip its sign, and Adam's
        # normalised step turns that into a visible difference (seen on an AMD EPYC: 4.9e-6 in 1 of 256 entries)
        for name, want in got["off"][1].items():
            torch.testing.assert_close(got["model"][1][name], want, rtol=1e-4, atol=1e-2 * cfg.lr)
    assert counters["stats"]["unique_graphs"] == graphs  # new expert counts and lengths: the same graphs
    assert "forward" not in vars(models["model"].get_decoder())  # evaluation sees the eager forward


def test_a_model_that_fails_to_compile_says_which_setting_to_change() -> None:
    """A backend or op torch.compile cannot take: one error naming model.compile, the eager forward restored."""
    from amole.backbones.loader import load_base_model
    from amole.client.train import train_steps
    from amole.config import TrainConfig
    from amole.moe.model import inject

    model, _ = load_base_model(ModelConfig(name="tiny-llama", tiny={"num_hidden_layers": 1}))
    inject(model, AdapterConfig(r=4, alpha=8.0, num_experts=6), compile="model", slots=4)
    _assign(model, 1)

    def fails(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("an op inductor cannot lower")

    decoder = model.get_decoder()
    decoder.amole_compiled_forward = fails
    with pytest.raises(RuntimeError, match="an op inductor cannot lower; set model.compile=on or off"):
        train_steps(model, _batches(1), TrainConfig(steps=1), 1)
    assert "forward" not in vars(decoder)
    model.amole_compile_whole = False  # the setting changed to off: the same model trains eagerly
    train_steps(model, _batches(1), TrainConfig(steps=1), 1)
