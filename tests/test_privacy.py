"""Metric DP of the uploaded routing statistics: noise nobody else can regenerate, a public clip bound."""

from __future__ import annotations

import numpy as np
import torch

from amole.moe.keys import expert_stat_key, router_stat_key
from amole.server.privacy import Guarantee, clip_to_norm, gamma_noise, privatize

M = "model.layers.0.self_attn.q_proj"


def clean_stats(r: int = 8, scale: float = 5.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {router_stat_key(M): scale * torch.randn(r, generator=g),
            expert_stat_key(M, 4): scale * torch.randn(r, generator=g),
            expert_stat_key(M, 7): 0.01 * torch.randn(r, generator=g)}


def test_privacy_noise_is_irreproducible() -> None:
    """Identical inputs, config and seeds give different noise: it comes from the OS, not from run seeds."""
    torch.manual_seed(0)
    np.random.seed(0)
    a = privatize(clean_stats(), eta=100.0, clip=1.0)
    torch.manual_seed(0)
    np.random.seed(0)
    b = privatize(clean_stats(), eta=100.0, clip=1.0)
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[k], b[k]) for k in a)


def test_privacy_clean_vectors_are_clipped_to_the_public_bound() -> None:
    stats = clean_stats()
    clip = 1.0
    clipped = clip_to_norm(torch.stack(list(stats.values())), clip)
    assert torch.all(clipped.norm(dim=-1) <= clip + 1e-6)
    assert torch.allclose(clipped[2], stats[expert_stat_key(M, 7)])  # shorter vectors are left as they are
    # With negligible noise the upload is the clipped clean vector, whatever the clean norm was (5x the bound).
    out = privatize(stats, eta=1e9, clip=clip)
    for i, k in enumerate(stats):
        assert torch.allclose(out[k], clipped[i], atol=1e-6)
        assert out[k].norm() <= clip + 1e-6


def test_privacy_noise_matches_the_mechanism() -> None:
    r, eta = 8, 100.0
    noise = gamma_noise((20000, r), eta, np.random.default_rng(0))
    assert abs(noise.norm(dim=-1).mean().item() - r / eta) < 0.01 * r / eta  # |z| ~ Gamma(r, rate eta)
    assert noise.mean(0).abs().max() < 0.005  # uniform directions
    # After clipping to the public bound, the distance to the clipped clean vector has mean r / eta.
    stats = {f"{M}.e.{i}": 3.0 * torch.randn(r) for i in range(4000)}
    out = privatize(stats, eta=eta, clip=1.0)
    clipped = clip_to_norm(torch.stack(list(stats.values())), 1.0)
    dist = (torch.stack([out[k] for k in stats]) - clipped).norm(dim=-1)
    assert abs(dist.mean().item() - r / eta) < 0.05 * r / eta
    stronger = privatize(stats, eta=1.0, clip=1.0)
    assert (torch.stack([stronger[k] for k in stats]) - clipped).norm(dim=-1).mean() > 50 * dist.mean()


def test_privacy_guarantee_is_two_eta_clip_per_vector_and_adds_up() -> None:
    g = Guarantee(eta=100.0, clip=0.5, vectors=9)
    assert g.epsilon_per_vector == 100.0 and g.epsilon_round == 900.0


def test_privacy_parameters_are_checked() -> None:
    import pytest

    with pytest.raises(ValueError, match="dp_eta"):
        privatize(clean_stats(), eta=0.0, clip=1.0)
    with pytest.raises(ValueError, match="dp_clip"):
        privatize(clean_stats(), eta=1.0, clip=0.0)


def test_reliability_epsilon_counts_every_release_including_a_joining_sites_probe() -> None:
    import torch

    from amole.compose import compose
    from server_app.run_report import _privacy_section
    from server_app.run_state import privacy_entry

    settings = compose(["model=tiny", "budget=smoke", "scenario=synthetic", "assign.dp_eta=10", "assign.dp_clip=0.5"])
    eps = 2 * 10 * 0.5
    two, one = {"a": torch.zeros(2), "b": torch.zeros(2)}, {"x": torch.zeros(2)}
    absent_after_probe = privacy_entry(settings, {"0": two}, {"2": one})
    assert absent_after_probe["clients"]["2"] == {"eta": 10.0, "clip": 0.5, "vectors": 1, "epsilon_per_vector": eps,
                                                  "epsilon_round": eps, "probe_vectors": 1}
    rounds = [{"round": 1, "privacy": privacy_entry(settings, {"0": two, "1": two})},
              {"round": 2, "privacy": privacy_entry(settings, {"0": two, "1": two, "2": two}, {"2": one})}]
    assert rounds[1]["privacy"]["clients"]["2"]["epsilon_round"] == 3 * eps
    text = "\n".join(_privacy_section(rounds))
    assert f"0 {4 * eps:g}, 1 {4 * eps:g}, 2 {3 * eps:g}." in text and "2 probed" in text
