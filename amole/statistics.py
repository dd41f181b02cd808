"""Embedding statistics for RSEA (spec §2): the client's mean router code and each held expert's mean code.

Client side: one no-grad pass over the embedding set accumulates token-weighted means of ``W_tok x`` and
``A_i x`` per module; optional metric-DP noise (amole.privacy) is added before anything leaves the client.
Server side: the uploads become each module's expert matrix E (mean over holders, last known code for experts
nobody held this round) and client matrix T.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

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
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
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


def embedding_matrices(
    uploads: Sequence[Mapping[str, Tensor]], module: str, num_experts: int, r: int,
    previous: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """(E, T) for one module: E[i] = mean code of expert i over the clients that held it, T[c] = client c's
    mean router code.

    The paper rebuilds E from every client each round; here an expert whose holders were all absent keeps its
    last known code (``previous[i]``, zeros if it never had one) instead of scoring as a zero vector.
    """
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
    if previous is not None:
        unheld = count == 0
        E[unheld] = torch.as_tensor(np.asarray(previous), dtype=torch.float64)[unheld]
    return E, T
