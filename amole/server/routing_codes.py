"""Routing codes, the server half of RSEA (spec §2): the uploaded statistics become each module's expert
matrix E (mean code of each expert over the clients that held it) and client matrix T (each client's mean
router code), which amole.server.planner scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from amole.moe.keys import expert_stat_key, router_stat_key


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
