"""Server-side averaging (spec §3).

One rule covers every tensor: a bank entry becomes the mean of the uploads that carry it. Routers and shared
experts are uploaded by every client, so they average over all; a routed expert is uploaded only by the
clients that held it, so it averages over its holders; an expert nobody held keeps its value.

Before averaging, a reply whose update is far larger than the median client's is left out (``outside_bound``):
finite and well-shaped replies can still be scaled to swamp the average.
"""

from __future__ import annotations

import math
import statistics
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


DEFAULT_UPDATE_BOUND = 10.0


def update_scales(bank: Mapping[str, Tensor], uploads: Mapping[str, Mapping[str, Tensor]]) -> dict[str, float]:
    """Each client's update size: the norm of (upload − bank) over the tensors every client uploads (routers and
    shared experts; a plain LoRA's own tensors), so clients holding different experts compare alike."""
    from amole.moe.keys import ROUTER, SHARED, parse_key

    out = {}
    for client, up in uploads.items():
        squares = [float(((t.double() - bank[k].double()) ** 2).sum()) for k, t in up.items()
                   if k in bank and parse_key(k).kind in (ROUTER, SHARED)]
        out[client] = math.sqrt(sum(squares)) if squares else math.nan
    return out


def outside_bound(bank: Mapping[str, Tensor], uploads: Mapping[str, Mapping[str, Tensor]],
                  bound: float | None) -> dict[str, str]:
    """Clients whose update is more than ``bound`` times the median client's (None: the default bound; 0: off),
    with the reason; one site cannot then drag every holder of its experts along. Needs three or more clients
    (with two, the median is their mean). Averaging is untouched when nobody is outside."""
    bound = DEFAULT_UPDATE_BOUND if bound is None else float(bound)
    scales = {c: s for c, s in update_scales(bank, uploads).items() if math.isfinite(s)}
    if bound <= 0 or len(scales) < 3:
        return {}
    median = statistics.median(scales.values())
    if median <= 0:
        return {}
    return {c: f"update {s / median:.3g}x the median client's (federation.update_bound={bound:g})"
            for c, s in scales.items() if s > bound * median}
