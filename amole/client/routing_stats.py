"""Routing statistics, the client half of RSEA (spec §2): the client's mean router code and each held
expert's mean code over its embedding set.

One no-grad pass accumulates token-weighted means of ``W_tok x`` and ``A_i x`` per module; optional metric-DP
noise (amole.server.privacy) is added before anything leaves the client. The server half is amole.server.routing_codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from amole.backbones.loader import model_device
from amole.client.losses import kept_logits
from amole.moe.keys import expert_stat_key, router_stat_key
from amole.moe.model import amole_layers, token_mask


@torch.no_grad()
def collect_statistics(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Token-weighted means of the router and expert codes over ``batches`` (eval mode, padding ignored)."""
    layers = {n: m for n, m in amole_layers(model).items() if m.router is not None}
    if not layers:
        return {}  # no routed experts anywhere: RSEA has nothing to score
    was_training = model.training
    device = model_device(model)  # the batches are built on the CPU
    model.eval()
    for layer in layers.values():
        layer.reset_stats()
        layer.collect_stats = True
    try:
        for batch in batches:
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with token_mask(model, mask):
                kept_logits(model, torch.zeros_like(mask, dtype=torch.bool), input_ids=ids, attention_mask=mask)
    finally:
        for layer in layers.values():
            layer.collect_stats = False
        model.train(was_training)
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if layer.stat_tokens == 0:
            raise ValueError("the embedding set produced no tokens: cannot compute routing statistics")
        out[router_stat_key(name)] = (layer.stat_router / layer.stat_tokens).float().cpu()
        for j, eid in enumerate(layer.expert_ids):
            out[expert_stat_key(name, eid)] = (layer.stat_experts[j] / layer.stat_tokens).float().cpu()
    return out
