"""Metric differential privacy for the routing statistics a client uploads (spec §2).

Threat model: the server (and anyone who sees the uploads) must not learn a client's clean statistics. So the
noise comes from the operating system's entropy, never from run seeds the server knows, and each clean vector
is first clipped to a *public* norm bound ``c`` (``assign.dp_clip``) so the sensitivity does not depend on
private data.

Mechanism: for a clean r-vector x with ||x|| <= c, release x + z where z has a uniform direction and a
Gamma(shape=r, rate=eta) magnitude, i.e. density proportional to exp(-eta ||z||). Its output densities for
any two inputs x, x' differ by at most a factor exp(eta ||x - x'||) (metric DP). Any two clipped inputs are at
most 2c apart, so each released vector is eps-DP with eps = 2 * eta * c, and the vectors of a round compose
additively (basic composition): eps_round = 2 * eta * c * (vectors released).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def private_rng() -> np.random.Generator:
    """A generator seeded from the OS entropy pool: no other party can reproduce its draws."""
    return np.random.default_rng()


def clip_to_norm(vectors: Tensor, bound: float) -> Tensor:
    """Scale each row of ``vectors`` down to norm ``bound`` where it is longer (shorter rows are unchanged)."""
    norms = vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return vectors * torch.clamp(bound / norms, max=1.0)


def gamma_noise(shape: tuple[int, ...], eta: float, rng: np.random.Generator) -> Tensor:
    """Metric-DP noise for r-vectors: a uniform direction scaled by a Gamma(shape=r, rate=eta) magnitude."""
    *lead, r = shape
    direction = rng.standard_normal(shape)
    direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    magnitude = rng.gamma(shape=r, scale=1.0 / eta, size=(*lead, 1))
    return torch.from_numpy(direction * magnitude).float()


def privatize(stats: Mapping[str, Tensor], eta: float, clip: float,
              rng: np.random.Generator | None = None) -> dict[str, Tensor]:
    """Noisy copy of the statistics: every vector clipped to the public ``clip`` norm, then noised.

    ``rng`` exists for tests of the noise's distribution; a client always uses :func:`private_rng`.
    """
    check_parameters(eta, clip)
    if not stats:
        return {}
    rng = private_rng() if rng is None else rng
    names = list(stats)
    clean = clip_to_norm(torch.stack([stats[k].float() for k in names]), clip)
    noisy = clean + gamma_noise(tuple(clean.shape), eta, rng)
    return {k: noisy[i].clone() for i, k in enumerate(names)}


def check_parameters(eta: float, clip: float | None) -> None:
    if not eta > 0:
        raise ValueError(f"assign.dp_eta must be positive (smaller = more noise), got {eta}")
    if clip is None or not clip > 0:
        raise ValueError(f"assign.dp_clip (the public norm bound of the statistics) must be positive, got {clip}")


@dataclass(frozen=True)
class Guarantee:
    """What the mechanism promises for one client in one round."""

    eta: float
    clip: float
    vectors: int  # r-vectors the client released this round

    @property
    def epsilon_per_vector(self) -> float:
        return 2.0 * self.eta * self.clip

    @property
    def epsilon_round(self) -> float:
        return self.epsilon_per_vector * self.vectors

    def to_dict(self) -> dict[str, float]:
        return {"eta": self.eta, "clip": self.clip, "vectors": self.vectors,
                "epsilon_per_vector": self.epsilon_per_vector, "epsilon_round": self.epsilon_round}


EXPLANATION = (
    "Each uploaded statistic is clipped to norm c (public) and noised with density ∝ exp(−η‖z‖), so two possible "
    "clean values x, x′ are indistinguishable up to a factor exp(η‖x−x′‖) ≤ exp(2ηc): ε per vector = 2ηc, "
    "ε per client·round = 2ηc × vectors uploaded (basic composition), and rounds add up. Only the routing "
    "statistics are noised; the adapter weights are uploaded without noise."
)
