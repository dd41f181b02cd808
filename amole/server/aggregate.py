"""Server-side averaging (spec §3).

One rule covers every tensor: a bank entry becomes the mean of the uploads that carry it. Routers and shared
experts are uploaded by every client, so they average over all; a routed expert is uploaded only by the
clients that held it, so it averages over its holders; an expert nobody held keeps its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def aggregate(
    bank: Mapping[str, Tensor],
    uploads: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """New bank: each entry averaged over the uploads holding it (optionally weighted, e.g. by examples)."""
    if weights is not None and len(weights) != len(uploads):
        raise ValueError(f"{len(weights)} weights for {len(uploads)} uploads")
    w = [1.0] * len(uploads) if weights is None else [float(x) for x in weights]
    if any(x < 0 for x in w) or (uploads and sum(w) <= 0):
        raise ValueError(f"aggregation weights must be non-negative with a positive sum, got {w}")
    for i, up in enumerate(uploads):
        unknown = [k for k in up if k not in bank]
        if unknown:
            raise KeyError(f"upload {i} carries tensors the bank does not have: {unknown[:5]}")
    new: dict[str, Tensor] = {}
    for key, old in bank.items():
        held = [(up[key], wi) for up, wi in zip(uploads, w, strict=True) if key in up and wi > 0]
        if not held:
            new[key] = old.clone()
            continue
        total = sum(wi for _, wi in held)
        acc = torch.zeros_like(old, dtype=torch.float64)
        for t, wi in held:
            acc += t.to(torch.float64) * (wi / total)
        new[key] = acc.to(old.dtype)
    return new
