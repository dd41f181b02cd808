"""Injection into a Hugging Face model, the message tensors' names, and their exact round trip."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from amole.backbones.loader import adapter_target_shapes, load_base_model
from amole.config import AdapterConfig, ModelConfig
from amole.moe import keys
from amole.moe.bank import create_bank, payload
from amole.moe.layer import AMoLELinear
from amole.moe.model import (
    export_adapters,
    import_adapters,
    inject,
    load_balance_loss,
    token_mask,
    trainable_parameters,
)

HELD = {0: [1, 4], 1: [0, 2, 5]}  # layer index -> held expert ids (q_proj); v_proj holds none


def held_for(layers: list[str]) -> dict[str, list[int]]:
    return {name: HELD.get(int(name.split(".")[2]), []) if name.endswith("q_proj") else [] for name in layers}


def test_inject_targets_q_and_v_and_freezes_backbone(tiny, adapter_cfg) -> None:
    model, _ = tiny
    layers = inject(model, adapter_cfg)
    assert sorted(layers) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(model.config.num_hidden_layers) for p in ("q_proj", "v_proj")
    )
    trainable = {id(p) for p in trainable_parameters(model)}
    for name, p in model.named_parameters():
        is_adapter = name.endswith((".A", ".B")) and isinstance(model.get_submodule(name[:-2]), AMoLELinear)
        assert p.requires_grad == is_adapter, name
        assert (id(p) in trainable) == is_adapter, name


def test_unknown_target_is_a_clear_error(tiny) -> None:
    model, _ = tiny
    with pytest.raises(ValueError, match="no linear layer named \\['qkv'\\].*q_proj"):
        inject(model, AdapterConfig(target_modules=("qkv",)))


def test_export_import_round_trip_is_exact(tiny, adapter_cfg) -> None:
    model, _ = tiny
    layers = inject(model, adapter_cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = create_bank(shapes, adapter_cfg, seed=3)
    bank = {k: torch.randn_like(v) for k, v in bank.items()}  # B is zero at init: make every value distinct
    sent = payload(bank, held_for(list(layers)))
    held = import_adapters(model, sent)
    assert held == held_for(list(layers))
    back = export_adapters(model)
    assert back.keys() == sent.keys()
    for k in sent:
        assert torch.equal(back[k], sent[k]), k
    # A second model built from the export behaves identically.
    other, _ = load_base_model(ModelConfig(name="tiny-llama"), device="cpu")
    inject(other, adapter_cfg)
    import_adapters(other, back)
    ids = torch.randint(0, 200, (2, 9))
    model.eval()
    other.eval()
    torch.testing.assert_close(model(input_ids=ids).logits, other(input_ids=ids).logits, rtol=0, atol=0)


def test_bad_payload_is_rejected_and_changes_nothing(tiny, adapter_cfg) -> None:
    model, _ = tiny
    layers = inject(model, adapter_cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = create_bank(shapes, adapter_cfg, seed=0)
    import_adapters(model, payload(bank, held_for(list(layers))))
    before = export_adapters(model)
    bad = payload(bank, {n: [0] for n in layers})
    name = next(iter(layers))
    bad[keys.expert_key(name, 0, "A")] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        import_adapters(model, bad)
    bad[keys.expert_key(name, 0, "A")] = torch.full((adapter_cfg.r, shapes[name][0]), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        import_adapters(model, bad)
    del bad[keys.router_key(name)]
    with pytest.raises(KeyError, match="lacks"):
        import_adapters(model, bad)
    after = export_adapters(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_bank_shapes_come_from_the_meta_model(adapter_cfg) -> None:
    shapes = adapter_target_shapes(ModelConfig(name="tiny-llama"), adapter_cfg.target_modules)
    bank = create_bank(shapes, adapter_cfg, seed=0)
    n_modules = len(shapes)
    assert len(bank) == n_modules * (3 + 2 * adapter_cfg.num_experts)
    again = create_bank(shapes, adapter_cfg, seed=0)
    assert all(torch.equal(bank[k], again[k]) for k in bank)  # every client starts from the same copies


def test_injection_works_on_linear4bit(adapter_cfg) -> None:
    model, _ = load_base_model(ModelConfig(name="tiny-llama", quantization="4bit", dense_on_cpu=False), device="cpu")
    layers = inject(model, adapter_cfg)
    assert all(isinstance(m.base, bnb.nn.Linear4bit) for m in layers.values())
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = {k: torch.randn_like(v) * 0.1 for k, v in create_bank(shapes, adapter_cfg, seed=0).items()}
    import_adapters(model, payload(bank, {n: [0, 1, 2] for n in layers}))
    model.train()
    ids = torch.randint(0, 200, (2, 8))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    layer = next(iter(layers.values()))
    assert isinstance(layer, AMoLELinear)
    grads = layer.grads()
    assert grads["experts_A"] is not None and grads["experts_A"].abs().sum() > 0
    assert grads["router"] is not None and grads["router"].abs().sum() > 0


def test_plain_lora_has_no_router_and_round_trips(tiny) -> None:
    """num_experts=0 is the FedIT baseline: one LoRA per module, no router to train or send."""
    model, _ = tiny
    cfg = AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=0)
    layers = inject(model, cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = {k: torch.randn_like(v) for k, v in create_bank(shapes, cfg, seed=0).items()}
    assert all(keys.parse_key(k).kind == keys.SHARED for k in bank)
    import_adapters(model, payload(bank, {}))
    out = export_adapters(model)
    assert out.keys() == bank.keys() and all(torch.equal(out[k], bank[k]) for k in bank)
    with pytest.raises(ValueError, match="trains nothing"):
        inject(load_base_model(ModelConfig(name="tiny-llama"), device="cpu")[0],
               AdapterConfig(num_experts=0, shared_expert=False))


@pytest.mark.parametrize("masked", [False, True])
def test_load_balance_loss_is_the_sum_of_each_modules_term(tiny, adapter_cfg, masked: bool) -> None:
    """The term is taken for all modules at once (one cat, not ~10 ops a module); modules holding different
    numbers of experts (q_proj 3 and 2, v_proj 4) give the same value and gradients as their terms one by one."""
    model, _ = tiny
    layers = inject(model, adapter_cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = {k: torch.randn_like(v) * 0.1 for k, v in create_bank(shapes, adapter_cfg, seed=0).items()}
    held = {n: [0, 1, 2, 3] if n.endswith("v_proj") else [5, 2, 4][: 3 - int(n.split(".")[2]) % 3] for n in layers}
    import_adapters(model, payload(bank, held))
    model.train()
    ids = torch.randint(0, 200, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    if masked:
        mask[1, 5:] = 0
    grads = []
    for total in (True, False):
        model.zero_grad(set_to_none=True)
        with token_mask(model, mask):
            model(input_ids=ids, attention_mask=mask)
        lb = load_balance_loss(model) if total else sum(layer.lb_loss for layer in layers.values())
        lb.backward()
        grads.append((lb.detach(), [p.grad for p in trainable_parameters(model)]))  # the last B's: None
    (got, got_grads), (want, want_grads) = grads
    torch.testing.assert_close(got, want)
    assert got > 0
    for g, w in zip(got_grads, want_grads, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w)
