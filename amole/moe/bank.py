"""The server's global expert bank: every module's router, shared expert and full pool of routed experts.

Created once from the adapted modules' shapes with one seed, so every client starts from the same copies
(spec §1); a client's payload is the slice of the bank its assignment names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from amole.config import AdapterConfig
from amole.moe import keys
from amole.moe.layer import init_lora_a


def create_bank(shapes: Mapping[str, tuple[int, int]], cfg: AdapterConfig, seed: int) -> dict[str, Tensor]:
    """All adapter tensors of all modules; ``shapes`` maps module name -> (in_features, out_features)."""
    g = torch.Generator().manual_seed(seed)
    bank: dict[str, Tensor] = {}
    for name in sorted(shapes):
        d_in, d_out = shapes[name]
        if cfg.num_experts > 0:
            bank[keys.router_key(name)] = init_lora_a(cfg.r, d_in, generator=g)
        if cfg.shared_expert:
            bank[keys.shared_key(name, "A")] = init_lora_a(cfg.r, d_in, generator=g)
            bank[keys.shared_key(name, "B")] = torch.zeros(d_out, cfg.r)
        for i in range(cfg.num_experts):
            bank[keys.expert_key(name, i, "A")] = init_lora_a(cfg.r, d_in, generator=g)
            bank[keys.expert_key(name, i, "B")] = torch.zeros(d_out, cfg.r)
    return bank


def modules_of(bank: Mapping[str, Tensor]) -> list[str]:
    return sorted({keys.parse_key(k).module for k in bank})


def payload(bank: Mapping[str, Tensor], held: Mapping[str, list[int]]) -> dict[str, Tensor]:
    """What one client receives: every router and shared expert, plus the routed experts it was assigned."""
    out: dict[str, Tensor] = {}
    for key, value in bank.items():
        k = keys.parse_key(key)
        if k.kind != keys.EXPERTS or k.expert in held.get(k.module, ()):
            out[key] = value
    missing = [(m, i) for m, ids in held.items() for i in ids if keys.expert_key(m, i, "A") not in bank]
    if missing:
        raise KeyError(f"assignment names experts the bank does not have: {missing[:5]}")
    return out
