"""FDLoRA's adaptive fusion: one client's private LoRA and the global LoRA merged by weights it tunes itself.

The merge is in parameter space, tensor by tensor (``w_p * private + w_g * global`` for every A and B, as
LoraHub composes LoRA modules), so the fused adapter has the same shape as either input and loads into the
same model. The two weights minimise the client's validation loss plus an L1 penalty; the search is
gradient-free (Nelder-Mead, kept inside [0, max_weight]^2) and starts from the simplex {(1, 1), (1, 0), (0, 1)}:
both modules at full weight, the private one alone, the global one alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from amole.config import FusionConfig

OUTSIDE_SLOPE = 10.0


@dataclass
class Fusion:
    w_private: float
    w_global: float
    objective: float  # validation loss + L1 penalty at these weights
    evaluations: int


def merge(private: Mapping[str, Tensor], global_: Mapping[str, Tensor], w_private: float,
          w_global: float) -> dict[str, Tensor]:
    """``w_private * private + w_global * global`` for every tensor; both must name the same tensors."""
    if set(private) != set(global_):
        diff = sorted(set(private) ^ set(global_))
        raise KeyError(f"private and global adapters differ in {len(diff)} tensors, e.g. {diff[:3]}")
    return {k: w_private * private[k] + w_global * global_[k] for k in private}


def tune_weights(loss_of: Callable[[Mapping[str, Tensor]], float], private: Mapping[str, Tensor],
                 global_: Mapping[str, Tensor], cfg: FusionConfig) -> Fusion:
    """The (w_private, w_global) in [0, max_weight]^2 with the lowest ``loss_of(merge) + l1 * (w_p + w_g)``.

    ``loss_of`` loads an adapter into the client's model and returns its validation loss; it is called at
    most ``cfg.max_evals`` times (repeated points are answered from a cache).
    """
    if cfg.max_evals < 1:
        raise ValueError(f"fusion.max_evals must be at least 1, got {cfg.max_evals}")
    hi = float(cfg.max_weight)
    if hi <= 0:
        raise ValueError(f"fusion.max_weight must be positive, got {cfg.max_weight}")
    seen: dict[tuple[float, float], float] = {}

    def objective(w: np.ndarray) -> float:
        # Outside the box: the value at the nearest box point plus a slope back in. Projecting the simplex
        # onto the box instead (scipy's bounded Nelder-Mead) lets it collapse onto an edge and stall there.
        inside = np.clip(w, 0.0, hi)
        key = (round(float(inside[0]), 6), round(float(inside[1]), 6))
        if key not in seen:
            if len(seen) >= cfg.max_evals:  # Nelder-Mead may overrun maxfev while finishing an iteration
                raise _Exhausted
            seen[key] = loss_of(merge(private, global_, *key)) + cfg.l1 * sum(key)
        return seen[key] + OUTSIDE_SLOPE * float(np.abs(w - inside).sum())

    simplex = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) * min(1.0, hi)
    with contextlib.suppress(_Exhausted):
        minimize(objective, simplex[0], method="Nelder-Mead",
                 options={"initial_simplex": simplex, "maxfev": 10 * cfg.max_evals, "xatol": 0.01, "fatol": 1e-4})
    (wp, wg), best = min(seen.items(), key=lambda kv: kv[1])
    return Fusion(wp, wg, best, len(seen))


class _Exhausted(Exception):
    """The search spent its evaluation budget."""
