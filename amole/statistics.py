"""Embedding statistics for RSEA (spec §2): the client's mean router code and each held expert's mean code.

Client side: one no-grad pass over the embedding set accumulates token-weighted means of ``W_tok x`` and
``A_i x`` per module; optional metric-DP noise is added before anything leaves the client. Server side:
the uploads become each module's expert matrix E (mean over holders) and client matrix T.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from amole.answer import kept_logits
from amole.model import amole_layers, token_mask


def router_stat_key(module: str) -> str:
    return f"{module}.t"


def expert_stat_key(module: str, expert: int) -> str:
    return f"{module}.e.{expert}"


@torch.no_grad()
def collect_statistics(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Token-weighted means of the router and expert codes over ``batches`` (eval mode, padding ignored)."""
    layers = {n: m for n, m in amole_layers(model).items() if m.router is not None}
    if not layers:
        return {}  # no routed experts anywhere: RSEA has nothing to score
    was_training = model.training
    model.eval()
    for layer in layers.values():
        layer.reset_stats()
        layer.collect_stats = True
    try:
        for batch in batches:
            with token_mask(model, batch["attention_mask"]):
                kept_logits(model, torch.zeros_like(batch["attention_mask"], dtype=torch.bool),  # no LM head
                            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for layer in layers.values():
            layer.collect_stats = False
        model.train(was_training)
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if layer.stat_tokens == 0:
            raise ValueError("the embedding set produced no tokens: cannot compute routing statistics")
        out[router_stat_key(name)] = (layer.stat_router / layer.stat_tokens).float()
        for j, eid in enumerate(layer.expert_ids):
            out[expert_stat_key(name, eid)] = (layer.stat_experts[j] / layer.stat_tokens).float()
    return out


def gamma_noise(shape: tuple[int, ...], eta: float, rng: np.random.Generator) -> Tensor:
    """Metric-DP noise for r-vectors: a uniform direction scaled by a Gamma(shape=r, rate=eta) magnitude."""
    *lead, r = shape
    direction = rng.standard_normal(shape)
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    magnitude = rng.gamma(shape=r, scale=1.0 / eta, size=(*lead, 1))
    return torch.from_numpy(direction * magnitude).float()


def privatize(stats: Mapping[str, Tensor], eta: float, rng: np.random.Generator) -> dict[str, Tensor]:
    """Noisy copy of the statistics, each module's vectors clipped to that module's largest clean norm."""
    if eta <= 0:
        raise ValueError(f"dp eta must be positive (smaller = more noise), got {eta}")
    by_module: dict[str, list[str]] = {}
    for key in stats:
        by_module.setdefault(_module_of(key), []).append(key)
    out: dict[str, Tensor] = {}
    for names in by_module.values():
        clean = torch.stack([stats[k].float() for k in names])
        bound = clean.norm(dim=-1).max()
        noisy = clean + gamma_noise(tuple(clean.shape), eta, rng)
        norms = noisy.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        noisy = noisy * torch.clamp(bound / norms, max=1.0)
        out.update({k: noisy[i].clone() for i, k in enumerate(names)})
    return out


def _module_of(key: str) -> str:
    head, _, tail = key.rpartition(".")
    if tail == "t":
        return head
    module, _, kind = head.rpartition(".")
    if kind != "e" or not tail.isdigit():
        raise ValueError(f"{key!r} is not a statistics name (<module>.t or <module>.e.<id>)")
    return module


def embedding_matrices(
    uploads: Sequence[Mapping[str, Tensor]], module: str, num_experts: int, r: int
) -> tuple[Tensor, Tensor]:
    """(E, T) for one module: E[i] = mean code of expert i over the clients that held it (zeros if none),
    T[c] = client c's mean router code."""
    E = torch.zeros(num_experts, r, dtype=torch.float64)
    count = torch.zeros(num_experts, dtype=torch.float64)
    T = torch.zeros(len(uploads), r, dtype=torch.float64)
    for c, up in enumerate(uploads):
        T[c] = up[router_stat_key(module)].double()
        for i in range(num_experts):
            v = up.get(expert_stat_key(module, i))
            if v is not None:
                E[i] += v.double()
                count[i] += 1
    E = E / count.clamp_min(1).unsqueeze(-1)
    return E, T
