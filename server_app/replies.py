"""Checks on what clients send back, before anything is aggregated.

A reply must carry exactly the adapter tensors its client was sent (same names, same shapes, finite values)
and the statistics for the experts it held; anything else is rejected with the reason, never averaged in.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from amole.keys import held_experts, router_key
from amole.statistics import expert_stat_key, router_stat_key


class BadReply(ValueError):
    """A client's reply that must not be aggregated."""


def check_upload(client: str, sent: Mapping[str, Tensor], adapters: Mapping[str, Tensor],
                 stats: Mapping[str, Tensor], r: int) -> None:
    missing = sorted(set(sent) - set(adapters))
    extra = sorted(set(adapters) - set(sent))
    if missing or extra:
        raise BadReply(f"client {client}: adapters differ from what it was sent (missing {missing[:3]}, "
                       f"not assigned {extra[:3]})")
    for key, value in adapters.items():
        if tuple(value.shape) != tuple(sent[key].shape):
            raise BadReply(f"client {client}: {key} has shape {tuple(value.shape)}, sent {tuple(sent[key].shape)}")
        if not torch.isfinite(value).all():
            raise BadReply(f"client {client}: {key} contains NaN or Inf")
    expected = set()
    for module, ids in held_experts(list(sent)).items():
        if router_key(module) in sent:  # modules without a routed pool have no statistics
            expected.add(router_stat_key(module))
            expected.update(expert_stat_key(module, i) for i in ids)
    if set(stats) != expected:
        raise BadReply(f"client {client}: statistics for {sorted(set(stats) ^ expected)[:3]} are missing or "
                       f"not for its experts")
    for key, value in stats.items():
        if tuple(value.shape) != (r,) or not torch.isfinite(value).all():
            raise BadReply(f"client {client}: statistic {key} must be a finite vector of length {r}")
